package migration

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
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
	pods  *record.Store[events.PodRecord]
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
	w := &world{Env: te, t: t, bus: te.Bus, dc: dc, vc: vc, dco: dco, vm: vmotion.New(vc.Client, dco)}
	w.pods = record.New[events.PodRecord](te.KV(events.BucketPods), "pod")
	w.pods.Attempts = 20
	// The inventory's host records and network-config's availability:
	// "default" on every host, "backend" on cluster-1 only.
	var all, first []string
	for _, h := range dc.Hosts() {
		all = append(all, h.Name)
		if h.Cluster == dc.Clusters()[0].Name {
			first = append(first, h.Name)
		}
		testenv.Put(te, events.BucketHosts, events.HostRecordKey(h.Name), &events.HostRecord{HostInfo: events.HostInfo{
			Name: h.Name, Cluster: h.Cluster, ConnectionState: events.HostConnected, CPUCores: int32(h.Cores), MemoryBytes: h.MemoryBytes,
		}})
	}
	w.network("default", all...)
	w.network("backend", first...)
	w.sched = newScheduler(w)
	return w
}

// network writes network-config's availability of a network.
func (w *world) network(name string, hosts ...string) {
	hosts = slices.Sorted(slices.Values(hosts))
	testenv.Put(w.Env, events.BucketNetHosts, events.NetworkRecordKey(name), &events.NetworkAvailability{Network: name, Version: 1, Hosts: hosts, Scope: hosts})
}

func (w *world) clusterHosts(i int) []string { return w.dc.Clusters()[i].Hosts }

func (w *world) clusterOf(host string) string { return simtest.ClusterOf(w.t, w.dc, host) }

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
	w.PutPodRecord(&events.PodRecord{
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
	hs, err := w.dc.Host(host)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	vm, _, err := simtest.NewPodVM(context.Background(), w.vc, w.dc, simtest.PodVM{Name: name, Host: hs, NumCPUs: 1, MemoryMB: 128,
		ExtraConfig: map[string]string{vmotion.UIDKey: uid, vmotion.NamespaceKey: ns, vmotion.PodKey: podName}, PowerOn: true})
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	return vm.Reference(), nil
}

// vmHost is where vCenter says a VM runs, and its resource pool.
func (w *world) vmHost(ref types.ManagedObjectReference) (host string, pool types.ManagedObjectReference) {
	w.t.Helper()
	return simtest.VMHost(w.t, w.vc, ref)
}

func (w *world) vmExists(ref types.ManagedObjectReference) bool { return simtest.VMExists(w.vc, ref) }

func (w *world) podRecord(name string) *events.PodRecord {
	w.t.Helper()
	r, _, err := w.pods.Get(context.Background(), events.PodRecordKey("default", name))
	if err != nil || r == nil {
		w.t.Fatalf("pod %s: %v %v", name, r, err)
	}
	return r
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
	s := w.WaitSeen(20*time.Second, "the end of migration "+id, func(s testenv.Seen) bool {
		switch v := s.Payload.(type) {
		case *events.MigrationCompleted:
			return v.ID == id
		case *events.MigrationFailed:
			return v.ID == id
		case *events.MigrationCancelled:
			return v.ID == id && s.Event.Source() == Source && !strings.Contains(s.Event.ID(), "release")
		case *events.MigrationRejected:
			return v.ID == id
		}
		return false
	})
	return s.Event.Type(), s.Payload
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
	load     map[string]int
	cordoned map[string]bool
	lost     map[string]bool
	// reservations by migration ID: source and target host.
	reservations map[string][2]string
	// silent lists migration IDs the stand-in does not answer, as a
	// scheduler that is down would not.
	silent map[string]bool
}

func newScheduler(w *world) *scheduler {
	s := &scheduler{w: w, load: map[string]int{}, cordoned: map[string]bool{}, lost: map[string]bool{}, reservations: map[string][2]string{}, silent: map[string]bool{}}
	w.Follow(s.on)
	return s
}

func (s *scheduler) on(seen testenv.Seen) {
	switch v := seen.Payload.(type) {
	case *events.MigrationRequested:
		s.reserve(context.Background(), v)
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
	r, _, err := w.pods.Get(ctx, events.PodRecordKey(v.Namespace, v.Pod))
	if err != nil || r == nil {
		w.publishAsync("podvisor/scheduler", events.TypeMigrationRejected, &events.MigrationRejected{
			ID: v.ID, Namespace: v.Namespace, Pod: v.Pod, Reason: "NotFound", Message: "pod " + v.Pod + " does not exist"})
		return
	}
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
	_, _ = s.w.pods.Mutate(context.Background(), events.PodRecordKey("default", name), func(r *events.PodRecord) error {
		mutate(r)
		return nil
	})
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

// publishAsync publishes as the stand-in, off the test's goroutine.
func (w *world) publishAsync(source, ceType string, p events.Payload) {
	if _, err := w.TryPublish(source, ceType, p.ObjectKey(), p); err != nil {
		w.t.Errorf("publish %s: %v", ceType, err)
	}
}

func vmRef(v string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VirtualMachine", Value: v}
}
