package migration

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// world is one test's system: a JetStream server, a simulated datacenter,
// the migration service under test, and small stand-ins for the services
// that are not under test, which publish what those would (the scheduler's
// reservations, the provisioner's pod records, network-config's
// availability, the inventory's host records). Every event on the bus is
// recorded.
type world struct {
	*testenv.Env
	t     *testing.T
	bus   *bus.Bus
	dc    *sim.Datacenter
	vc    *govmomi.Client
	dco   *object.Datacenter
	vm    *vmotion.Client
	rec   recorder
	pods  jetstream.KeyValue
	hosts jetstream.KeyValue
	nets  jetstream.KeyValue
	sched *scheduler
	svc   *Service
	// stop ends the running service and waits for Run to return.
	stop func()
}

func newWorld(t *testing.T, clusters, hostsPerCluster int) *world {
	t.Helper()
	te := testenv.Start(t, testenv.Datacenter(sim.Config{Clusters: clusters, HostsPerCluster: hostsPerCluster, Seed: 7}))
	dc := te.DC
	vc := simtest.Client(t, dc)
	dco, err := find.NewFinder(vc.Client).DefaultDatacenter(context.Background())
	if err != nil {
		t.Fatalf("datacenter: %v", err)
	}
	w := &world{Env: te, t: t, bus: te.Bus, dc: dc, vc: vc, dco: dco, vm: vmotion.New(vc.Client, dco), rec: recorder{te.Events}}
	w.pods, w.hosts, w.nets = te.KV(events.BucketPods), te.KV(events.BucketHosts), te.KV(events.BucketNetHosts)
	// The inventory's host records and network-config's availability:
	// "default" on every host, "backend" on cluster-1 only.
	var all, first []string
	for _, h := range dc.Hosts() {
		all = append(all, h.Name)
		if h.Cluster == dc.Clusters()[0].Name {
			first = append(first, h.Name)
		}
		w.putJSON(w.hosts, events.HostRecordKey(h.Name), &events.HostRecord{HostInfo: events.HostInfo{
			Name: h.Name, Cluster: h.Cluster, ConnectionState: events.HostConnected, CPUCores: int32(h.Cores), MemoryBytes: h.MemoryBytes,
		}})
	}
	w.network("default", all...)
	w.network("backend", first...)
	w.sched = newScheduler(w)
	return w
}

func (w *world) putJSON(kv jetstream.KeyValue, key string, v any) {
	w.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), key, data); err != nil {
		w.t.Fatalf("put %s: %v", key, err)
	}
}

// network writes network-config's availability of a network.
func (w *world) network(name string, hosts ...string) {
	hosts = slices.Sorted(slices.Values(hosts))
	w.putJSON(w.nets, events.NetworkRecordKey(name), &events.NetworkAvailability{Network: name, Version: 1, Hosts: hosts, Scope: hosts})
}

func (w *world) clusterHosts(i int) []string { return w.dc.Clusters()[i].Hosts }

func (w *world) clusterOf(host string) string {
	h, err := w.dc.Host(host)
	if err != nil {
		w.t.Fatalf("host %s: %v", host, err)
	}
	return h.Cluster
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Workers = 8
	cfg.AckWait = 5 * time.Second
	cfg.MaxAttempts = 5
	cfg.BackOff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}
	cfg.SweepInterval = 100 * time.Millisecond
	cfg.PrecheckTimeout = 10 * time.Second
	cfg.RelocateTimeout = 20 * time.Second
	cfg.DrainTimeout = 60 * time.Second
	return cfg
}

// start runs the service until the test ends.
func (w *world) start(cfg Config) *Service {
	w.t.Helper()
	return w.runService(newServiceForTest(w.t, w, cfg))
}

func newServiceForTest(t *testing.T, w *world, cfg Config) *Service {
	t.Helper()
	svc, err := newService(cfg, w.bus, w.vm, testLogger(t))
	if err != nil {
		t.Fatalf("new service: %v", err)
	}
	return svc
}

// runService runs svc until the test ends or w.stop is called.
func (w *world) runService(svc *Service) *Service {
	w.svc = svc
	w.stop = w.Run(Name, svc.Run)
	return svc
}

func testLogger(t *testing.T) *slog.Logger { return testenv.Logger().With("test", t.Name()) }

// pod is a running pod the test placed: its VM in vCenter and the
// provisioner's record.
type pod struct {
	ns, name, uid, host string
	vm                  types.ManagedObjectReference
}

func (p pod) key() string { return events.PodKey(p.ns, p.name) }

// runPod creates a pod VM on host and the provisioner's record of a
// Running pod.
func (w *world) runPod(name, host string, networks ...string) pod {
	w.t.Helper()
	if len(networks) == 0 {
		networks = []string{"default"}
	}
	uid := fmt.Sprintf("uid-%s", name)
	ref := w.createVM(host, "pv-"+uid, uid, "default", name)
	w.putJSON(w.pods, events.PodRecordKey("default", name), &events.PodRecord{
		UID: uid, Namespace: "default", Name: name, Phase: events.PodPhaseRunning, Networks: networks,
		Host: host, Cluster: w.clusterOf(host), Datastores: []string{sim.SharedDatastore},
		VMName: "pv-" + uid, VMRef: ref.Value, CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC(),
	})
	return pod{ns: "default", name: name, uid: uid, host: host, vm: ref}
}

// createVM makes a powered-on VM on host with the provisioner's guestinfo.
func (w *world) createVM(host, name, uid, ns, podName string) types.ManagedObjectReference {
	w.t.Helper()
	ref, err := w.tryCreateVM(host, name, uid, ns, podName)
	if err != nil {
		w.t.Fatal(err)
	}
	return ref
}

func (w *world) tryCreateVM(host, name, uid, ns, podName string) (types.ManagedObjectReference, error) {
	ctx := context.Background()
	var none types.ManagedObjectReference
	hs, err := w.dc.Host(host)
	if err != nil {
		return none, err
	}
	var pool types.ManagedObjectReference
	for _, c := range w.dc.Clusters() {
		if c.Name == hs.Cluster {
			pool = c.ResourcePool
		}
	}
	folders, err := w.dco.Folders(ctx)
	if err != nil {
		return none, err
	}
	spec := types.VirtualMachineConfigSpec{
		Name: name, GuestId: string(types.VirtualMachineGuestOsIdentifierOtherGuest64), NumCPUs: 1, MemoryMB: 128,
		Files: &types.VirtualMachineFileInfo{VmPathName: "[" + sim.SharedDatastore + "]"},
		ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: vmotion.UIDKey, Value: uid},
			&types.OptionValue{Key: vmotion.NamespaceKey, Value: ns},
			&types.OptionValue{Key: vmotion.PodKey, Value: podName},
		},
	}
	h := object.NewHostSystem(w.vc.Client, hs.Ref)
	task, err := folders.VmFolder.CreateVM(ctx, spec, object.NewResourcePool(w.vc.Client, pool), h)
	if err != nil {
		return none, fmt.Errorf("create VM %s: %w", name, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		return none, fmt.Errorf("create VM %s: %w", name, err)
	}
	ref := info.Result.(types.ManagedObjectReference)
	ptask, err := object.NewVirtualMachine(w.vc.Client, ref).PowerOn(ctx)
	if err == nil {
		err = ptask.Wait(ctx)
	}
	if err != nil {
		return none, fmt.Errorf("power on %s: %w", name, err)
	}
	return ref, nil
}

// vmHost is where vCenter says a VM runs, and its resource pool.
func (w *world) vmHost(ref types.ManagedObjectReference) (host string, pool types.ManagedObjectReference) {
	w.t.Helper()
	var m mo.VirtualMachine
	if err := w.vc.RetrieveOne(context.Background(), ref, []string{"runtime.host", "resourcePool"}, &m); err != nil {
		w.t.Fatalf("VM %s: %v", ref.Value, err)
	}
	var h mo.HostSystem
	if err := w.vc.RetrieveOne(context.Background(), *m.Runtime.Host, []string{"name"}, &h); err != nil {
		w.t.Fatal(err)
	}
	return h.Name, *m.ResourcePool
}

func (w *world) vmExists(ref types.ManagedObjectReference) bool {
	var m mo.VirtualMachine
	err := w.vc.RetrieveOne(context.Background(), ref, []string{"name"}, &m)
	return err == nil
}

func (w *world) podRecord(name string) *events.PodRecord {
	w.t.Helper()
	e, err := w.pods.Get(context.Background(), events.PodRecordKey("default", name))
	if err != nil {
		w.t.Fatalf("pod %s: %v", name, err)
	}
	var r events.PodRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		w.t.Fatal(err)
	}
	return &r
}

func (w *world) migration(id string) *events.MigrationRecord {
	w.t.Helper()
	r, err := w.svc.store.migration(context.Background(), id)
	if err != nil || r == nil {
		w.t.Fatalf("migration record %s: %v %v", id, r, err)
	}
	return r
}

// migrationPhase is a migration's phase, "" while it has no record.
func (w *world) migrationPhase(id string) string {
	r, err := w.svc.store.migration(context.Background(), id)
	if err != nil || r == nil {
		return ""
	}
	return r.Phase
}

type eventT = event.Event

// publish sends an event as a client or another service would.
func (w *world) publish(source, ceType string, p events.Payload) uint64 {
	return w.PublishAs(source, ceType, p.ObjectKey(), p)
}

// migrate publishes migration.requested as the CLI does.
func (w *world) migrate(id string, p pod, to string) {
	w.t.Helper()
	w.publish("podvisor/cli", events.TypeMigrationRequested, &events.MigrationRequested{ID: id, Namespace: p.ns, Pod: p.name, TargetHost: to})
}

// waitEnd waits for the migration's final event and returns its type and
// payload.
func (w *world) waitEnd(id string) (string, any) {
	w.t.Helper()
	ev := w.rec.wait(w.t, 20*time.Second, func(ev event.Event, p any) bool {
		switch v := p.(type) {
		case *events.MigrationCompleted:
			return v.ID == id
		case *events.MigrationFailed:
			return v.ID == id
		case *events.MigrationCancelled:
			return v.ID == id && ev.Source() == Source && !strings.Contains(ev.ID(), "release")
		case *events.MigrationRejected:
			return v.ID == id
		}
		return false
	})
	p, _ := events.Decode(ev.Type(), ev.Data())
	return ev.Type(), p
}

// recorder reads the test environment's record of the bus.
type recorder struct{ *testenv.Recorder }

// events returns the decoded events in order, each id once (what a
// JetStream consumer sees after de-duplication).
func (r recorder) events() []recorded {
	seen := map[string]bool{}
	var out []recorded
	for _, s := range r.Seen() {
		if !seen[s.Event.ID()] && s.Err == nil && s.Payload != nil {
			seen[s.Event.ID()] = true
			out = append(out, recorded{s.Event, s.Payload})
		}
	}
	return out
}

type recorded struct {
	ev event.Event
	p  any
}

func (r recorder) wait(t *testing.T, d time.Duration, pred func(event.Event, any) bool) event.Event {
	t.Helper()
	var found event.Event
	testenv.Eventually(t, "a matching event", d, func() bool {
		i := slices.IndexFunc(r.events(), func(e recorded) bool { return pred(e.ev, e.p) })
		if i >= 0 {
			found = r.events()[i].ev
		}
		return i >= 0
	})
	return found
}

// collect returns the payloads of one type.
func collect[T any](r recorder) []T {
	var out []T
	for _, e := range r.events() {
		if v, ok := e.p.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, what, 20*time.Second, cond)
}

// scheduler stands in for the scheduler and the provisioner: it answers
// migration.requested with a reservation (the named target, or the least
// used other connected, uncordoned host of the pod's cluster), and applies
// migration.completed and pod.evicted to the pod records as the
// provisioner would (an evicted pod restarts on another host of its
// cluster in a new VM, leaving the old one behind, as on a host that does
// not answer).
type scheduler struct {
	w        *world
	mu       sync.Mutex
	seen     map[string]bool
	load     map[string]int
	cordoned map[string]bool
	lost     map[string]bool
	// reservations by migration ID: source and target host.
	reservations map[string][2]string
	sub          *nats.Subscription
	// silent lists migration IDs the stand-in does not answer, as a
	// scheduler that is down would not.
	silent map[string]bool
}

func newScheduler(w *world) *scheduler {
	s := &scheduler{w: w, seen: map[string]bool{}, load: map[string]int{}, cordoned: map[string]bool{}, lost: map[string]bool{}, reservations: map[string][2]string{}, silent: map[string]bool{}}
	sub, err := w.bus.Conn().Subscribe("pv.>", s.on)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.bus.Conn().Flush(); err != nil {
		w.t.Fatal(err)
	}
	s.sub = sub
	w.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return s
}

func (s *scheduler) on(m *nats.Msg) {
	ev, err := bus.DecodeMessage(m)
	if err != nil {
		return
	}
	s.mu.Lock()
	if s.seen[ev.ID()] {
		s.mu.Unlock()
		return
	}
	s.seen[ev.ID()] = true
	s.mu.Unlock()
	p, err := events.Decode(ev.Type(), ev.Data())
	if err != nil {
		return
	}
	ctx := context.Background()
	switch v := p.(type) {
	case *events.MigrationRequested:
		s.reserve(ctx, v)
	case *events.HostCordoned:
		s.mu.Lock()
		s.cordoned[v.Name] = true
		s.mu.Unlock()
	case *events.HostUncordoned:
		s.mu.Lock()
		delete(s.cordoned, v.Name)
		s.mu.Unlock()
	case *events.MigrationCompleted:
		s.update(v.Pod, func(r *events.PodRecord) { r.Host, r.Cluster = v.TargetHost, v.TargetCluster })
	case *events.PodEvicted:
		go s.restart(v)
	}
}

func (s *scheduler) reserve(ctx context.Context, v *events.MigrationRequested) {
	w := s.w
	s.mu.Lock()
	silent := s.silent[v.ID]
	s.mu.Unlock()
	if silent {
		return
	}
	e, err := w.pods.Get(ctx, events.PodRecordKey(v.Namespace, v.Pod))
	if err != nil {
		w.publishAsync("podvisor/scheduler", events.TypeMigrationRejected, &events.MigrationRejected{
			ID: v.ID, Namespace: v.Namespace, Pod: v.Pod, Reason: "NotFound", Message: "pod " + v.Pod + " does not exist"})
		return
	}
	var r events.PodRecord
	_ = json.Unmarshal(e.Value(), &r)
	target := v.TargetHost
	if target == "" {
		target = s.pick(r.Host, r.Cluster)
	}
	if target == "" {
		w.publishAsync("podvisor/scheduler", events.TypeMigrationRejected, &events.MigrationRejected{
			ID: v.ID, Namespace: v.Namespace, Pod: v.Pod, Reason: "NoTarget", Message: "no other host has room"})
		return
	}
	s.mu.Lock()
	s.reservations[v.ID] = [2]string{r.Host, target}
	s.mu.Unlock()
	cluster := w.clusterOf(target)
	w.publishAsync("podvisor/scheduler", events.TypeMigrationTargetReserved, &events.MigrationTargetReserved{
		ID: v.ID, Namespace: v.Namespace, Pod: v.Pod, UID: r.UID, SourceHost: r.Host,
		TargetHost: target, TargetCluster: cluster, TargetPool: "/DC0/host/" + cluster + "/Resources",
	})
}

// pick chooses the least loaded other host of the cluster.
func (s *scheduler) pick(source, cluster string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := ""
	for _, c := range s.w.dc.Clusters() {
		if c.Name != cluster {
			continue
		}
		for _, h := range c.Hosts {
			if h == source || s.cordoned[h] || s.lost[h] {
				continue
			}
			if best == "" || s.load[h] < s.load[best] {
				best = h
			}
		}
	}
	if best != "" {
		s.load[best]++
	}
	return best
}

func (s *scheduler) update(name string, mutate func(r *events.PodRecord)) {
	w := s.w
	for range 20 {
		e, err := w.pods.Get(context.Background(), events.PodRecordKey("default", name))
		if err != nil {
			return
		}
		var r events.PodRecord
		_ = json.Unmarshal(e.Value(), &r)
		mutate(&r)
		data, _ := json.Marshal(&r)
		if _, err := w.pods.Update(context.Background(), e.Key(), data, e.Revision()); err == nil {
			return
		}
	}
}

// restart places an evicted pod on another host in a new VM.
func (s *scheduler) restart(v *events.PodEvicted) {
	s.mu.Lock()
	s.lost[v.Host] = true
	s.mu.Unlock()
	host := s.pick(v.Host, s.w.clusterOf(v.Host))
	name := "pv-" + v.UID + "-1"
	ref, err := s.w.tryCreateVM(host, name, v.UID, v.Namespace, v.Name)
	if err != nil {
		s.w.t.Errorf("restart %s: %v", v.Name, err)
		return
	}
	s.update(v.Name, func(r *events.PodRecord) {
		r.Host, r.Phase, r.VMName, r.VMRef, r.Generation = host, events.PodPhaseRunning, name, ref.Value, 1
	})
}

// publishAsync publishes from a NATS callback, where a synchronous
// JetStream publish would wait on the callback's own connection.
func (w *world) publishAsync(source, ceType string, p events.Payload) {
	go func() {
		ev, err := bus.NewEvent(source, ceType, p.ObjectKey(), p)
		if err == nil {
			err = w.bus.Publish(context.Background(), ev)
		}
		if err != nil {
			w.t.Errorf("publish %s: %v", ceType, err)
		}
	}()
}

func vmRef(v string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: v}
}
