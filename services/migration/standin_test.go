package migration

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// Stand-ins for the services the migration tests do not run: the
// provisioner's part (pods running in VMs of their own, and their records),
// the scheduler's (reservations, restarts of evicted pods) and
// network-config's (where a network is available).

// pod is a running pod the test placed: its VM in vCenter and the
// provisioner's record.
type pod struct {
	ns, name, uid, host string
	vm                  types.ManagedObjectReference
}

func (p pod) key() string { return events.PodKey(p.ns, p.name) }

// network writes network-config's availability of a network.
func (w *world) network(name string, hosts ...string) {
	w.PutNetwork(name, hosts, hosts)
}

// runPod creates a pod VM on host and the provisioner's record of a
// Running pod.
func (w *world) runPod(name, host string, networks ...string) pod {
	w.T.Helper()
	if len(networks) == 0 {
		networks = []string{"default"}
	}
	uid := fmt.Sprintf("uid-%s", name)
	ref := w.createVM(host, "pv-"+uid, uid, "default", name)
	w.PutPodRecord(&events.PodRecord{
		UID: uid, Namespace: "default", Name: name, Phase: events.PodPhaseRunning, Networks: networks,
		Host: host, Cluster: w.ClusterOf(host), Datastores: []string{sim.SharedDatastore},
		VMName: "pv-" + uid, VMRef: ref.Value, CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC(),
	})
	return pod{ns: "default", name: name, uid: uid, host: host, vm: ref}
}

// runPods runs n pods on host, named prefix0 to prefix<n-1>.
func (w *world) runPods(prefix string, n int, host string) []pod {
	w.T.Helper()
	pods := make([]pod, 0, n)
	for i := range n {
		pods = append(pods, w.runPod(fmt.Sprintf("%s%d", prefix, i), host))
	}
	return pods
}

// createVM makes a powered-on VM on host with the provisioner's guestinfo.
func (w *world) createVM(host, name, uid, ns, podName string) types.ManagedObjectReference {
	w.T.Helper()
	ref, err := w.tryCreateVM(host, name, uid, ns, podName)
	if err != nil {
		w.T.Fatal(err)
	}
	return ref
}

func (w *world) tryCreateVM(host, name, uid, ns, podName string) (types.ManagedObjectReference, error) {
	hs, err := w.DC.Host(host)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	vm, _, err := simtest.NewPodVM(context.Background(), w.vc, w.DC, simtest.PodVM{Name: name, Host: hs, NumCPUs: 1, MemoryMB: 128,
		ExtraConfig: map[string]string{vmotion.UIDKey: uid, vmotion.NamespaceKey: ns, vmotion.PodKey: podName}, PowerOn: true})
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	return vm.Reference(), nil
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
			MigrationRef: events.MigrationRef{ID: v.ID, Namespace: v.Namespace, Pod: v.Pod}, Reason: "NotFound", Message: "pod " + v.Pod + " does not exist"})
		return
	}
	target := v.TargetHost
	if target == "" {
		target = s.pick(r.Host, r.Cluster)
	}
	if target == "" {
		w.publishAsync("podvisor/scheduler", events.TypeMigrationRejected, &events.MigrationRejected{
			MigrationRef: events.MigrationRef{ID: v.ID, Namespace: v.Namespace, Pod: v.Pod}, Reason: "NoTarget", Message: "no other host has room"})
		return
	}
	s.mu.Lock()
	s.reservations[v.ID] = [2]string{r.Host, target}
	s.mu.Unlock()
	cluster := w.ClusterOf(target)
	w.publishAsync("podvisor/scheduler", events.TypeMigrationTargetReserved, &events.MigrationTargetReserved{
		MigrationRef:  events.MigrationRef{ID: v.ID, Namespace: v.Namespace, Pod: v.Pod},
		MigrationMove: events.MigrationMove{UID: r.UID, SourceHost: r.Host, TargetHost: target, TargetCluster: cluster, TargetPool: "/DC0/host/" + cluster + "/Resources"},
	})
}

// pick chooses the least loaded other host of the cluster.
func (s *scheduler) pick(source, cluster string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := ""
	for _, c := range s.w.DC.Clusters() {
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
	host := s.pick(v.Host, s.w.ClusterOf(v.Host))
	name := "pv-" + v.UID + "-1"
	ref, err := s.w.tryCreateVM(host, name, v.UID, v.Namespace, v.Name)
	if err != nil {
		s.w.T.Errorf("restart %s: %v", v.Name, err)
		return
	}
	s.update(v.Name, func(r *events.PodRecord) {
		r.Host, r.Phase, r.VMName, r.VMRef, r.Generation = host, events.PodPhaseRunning, name, ref.Value, 1
	})
}

// publishAsync publishes as the stand-in, off the test's goroutine.
func (w *world) publishAsync(source, ceType string, p events.Payload) {
	if _, err := w.TryPublish(source, ceType, p.ObjectKey(), p); err != nil {
		w.T.Errorf("publish %s: %v", ceType, err)
	}
}
