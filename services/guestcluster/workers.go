package guestcluster

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// Worker nodes: spec.workers.replicas native VMs of the supervisor, named
// <cluster>-worker-<i> (events.GuestClusterWorkerName) in the guest
// cluster's namespace, of class spec.workers.className, booting
// spec.workers.imageName, on spec.network, labelled with the guest cluster
// and the role worker. They are declared as vm.declared (as a client would:
// the native VM controller makes them) on every request whose spec differs
// from what a VM has, and deleted (vm.delete.requested) when the count
// shrinks or the guest cluster is deleted. A running guest cluster keeps
// its count, as a MachineSet does: a worker VM that went (vm.deleted, or
// its record missing at the resync) is declared again under its name
// (replaceWorkers), unless the guest cluster is being deleted. Each is a
// node of the guest cluster of the same name (podvisor-guest's Workers,
// fed by the node.list query), Ready while its VM is Ready and PoweredOn on
// a host; the record's Workers and ReadyWorkers say the same, refreshed on
// every node.list, resync and replacement: a worker VM being made again is
// not Ready and not counted.

// workerRole is the value of events.LabelGuestClusterRole on worker VMs.
const workerRole = "worker"

// workerRetry is how long a request waits for a worker VM being deleted
// (a scale-down followed by a scale-up) before declaring it again.
const workerRetry = 2 * time.Second

// errWorkerDeleting is why declareWorkers waits: a worker VM it wants is
// still being deleted.
var errWorkerDeleting = errors.New("still being deleted")

// workerVMs are the guest cluster's worker VM records, by name.
func (s *Service) workerVMs(ctx context.Context, ns, name string) (map[string]*events.VMRecord, error) {
	return s.roleVMs(ctx, ns, name, workerRole)
}

// controlPlaneRole is the value of events.LabelGuestClusterRole on
// control-plane VMs.
const controlPlaneRole = "control-plane"

// roleVMs are the guest cluster's VM records of a role, by name.
func (s *Service) roleVMs(ctx context.Context, ns, name, role string) (map[string]*events.VMRecord, error) {
	all, err := s.vms.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	out := map[string]*events.VMRecord{}
	for i := range all {
		v := &all[i]
		if v.Namespace == ns && v.Labels[events.LabelGuestCluster] == name && v.Labels[events.LabelGuestClusterRole] == role {
			out[v.Name] = v
		}
	}
	return out, nil
}

// workerVM is the declaration of worker i.
func workerVM(ns, name string, spec events.GuestClusterSpec, i int) events.VirtualMachine {
	vm := events.GuestClusterWorkerName(name, i)
	return events.VirtualMachine{
		APIVersion: events.APIVersion, Kind: "VirtualMachine",
		Metadata: events.NamespacedMeta{Name: vm, Namespace: ns, Labels: map[string]string{
			events.LabelGuestCluster: name, events.LabelGuestClusterRole: workerRole}},
		Spec: events.VirtualMachineSpec{
			ClassName: spec.Workers.ClassName, ImageName: spec.Workers.Image(), PowerState: "PoweredOn",
			Networks: []string{spec.Network},
			// What the node's OS learns of its role, the way cloud-init
			// hands it over.
			UserData: fmt.Sprintf("#cloud-config\nwrite_files:\n- path: /etc/podvisor/guestcluster\n  content: %s/%s worker %s\n", ns, name, vm),
		},
	}
}

// sameVM reports whether the record already has the declaration; the
// user data is compared only when it is made the same each time (a
// worker VM that runs its node gets freshly minted credentials in its
// user data: it is declared again only when something else changes).
func sameVM(r *events.VMRecord, want events.VirtualMachine, userData bool) bool {
	got := r.Spec
	return got.ClassName == want.Spec.ClassName && got.ImageName == want.Spec.ImageName &&
		got.EffectivePowerState() == want.Spec.PowerState && slices.Equal(got.Networks, want.Spec.Networks) &&
		(!userData || got.UserData == want.Spec.UserData)
}

// declareWorkers makes the worker VMs match spec.workers: it declares
// those missing or different and asks for the deletion of those past the
// count. A wanted VM still being deleted makes the request wait.
func (s *Service) declareWorkers(ctx context.Context, cause *event.Event, ns, name string, spec events.GuestClusterSpec) error {
	have, err := s.workerVMs(ctx, ns, name)
	if err != nil {
		return err
	}
	want := int(spec.Workers.Replicas)
	// With control planes in VMs, each worker VM runs its own node.
	vc, inVMs := s.cps.(*VMControlPlanes)
	var creds string
	// deleting names a wanted VM still being deleted: the others are
	// declared all the same, and the request waits for it.
	var deleting string
	for i := range want {
		vm := workerVM(ns, name, spec, i)
		if inVMs {
			vm.Spec.ImageName = vc.workerImage(spec)
		}
		cur := have[vm.Metadata.Name]
		switch {
		case cur != nil && !cur.DeletionRequestedAt.IsZero():
			deleting = vm.Metadata.Name
			continue
		case cur != nil && sameVM(cur, vm, !inVMs):
			continue
		}
		if inVMs {
			if creds == "" {
				if creds, err = s.minter.MintGuest(ns, name); err != nil {
					return fmt.Errorf("identity of %s/%s: %w", ns, name, err)
				}
			}
			if vm, err = vc.workerVM(ctx, ns, name, spec, i, creds); err != nil {
				return fmt.Errorf("worker VM %s/%s: %w", ns, vm.Metadata.Name, err)
			}
		}
		if err := s.out.Emit(ctx, cause, &events.VMDeclared{VM: vm}, bus.Distinct(vm.Metadata.Name)); err != nil {
			return err
		}
	}
	for vmName, cur := range have {
		if workerIndex(name, vmName) < want || !cur.DeletionRequestedAt.IsZero() {
			continue
		}
		if err := s.out.Emit(ctx, cause, &events.VMDeleteRequested{Namespace: ns, Name: vmName}, bus.Distinct("delete/"+vmName)); err != nil {
			return err
		}
	}
	if deleting != "" {
		return bus.RetryAfter(fmt.Errorf("worker VM %s/%s is %w", ns, deleting, errWorkerDeleting), workerRetry)
	}
	return nil
}

// workerIndex is i of a worker VM name, -1 when it is none.
func workerIndex(cluster, vm string) int {
	// The last "-worker-": the cluster's own name may hold one.
	at := strings.LastIndex(vm, "-worker-")
	if at < 0 {
		return -1
	}
	i, err := strconv.Atoi(vm[at+len("-worker-"):])
	if err != nil || i < 0 || events.GuestClusterWorkerName(cluster, i) != vm {
		return -1
	}
	return i
}

// workerNodes are the worker nodes as the VM records show them, in index
// order.
func (s *Service) workerNodes(ctx context.Context, rec *events.GuestClusterRecord) ([]events.GuestNode, error) {
	have, err := s.workerVMs(ctx, rec.Namespace, rec.Name)
	if err != nil {
		return nil, err
	}
	if vc, ok := s.cps.(*VMControlPlanes); ok {
		vc.connectWorkersSoon(rec.Namespace, rec.Name, have)
	}
	var out []events.GuestNode
	for i := range int(rec.Spec.Workers.Replicas) {
		vm := events.GuestClusterWorkerName(rec.Name, i)
		out = append(out, vmNode(rec.Namespace, vm, rec.Spec.Workers.ClassName, have[vm]))
	}
	return out, nil
}

// controlPlaneNodes are the control-plane VMs as their records show them,
// in index order; none when the control plane does not run in VMs.
func (s *Service) controlPlaneNodes(ctx context.Context, rec *events.GuestClusterRecord) ([]events.GuestNode, error) {
	if _, ok := s.cps.(*VMControlPlanes); !ok {
		return nil, nil
	}
	have, err := s.roleVMs(ctx, rec.Namespace, rec.Name, controlPlaneRole)
	if err != nil {
		return nil, err
	}
	var out []events.GuestNode
	for i := range max(int(rec.Spec.ControlPlane.Replicas), 1) {
		vm := controlPlaneVMName(rec.Name, i)
		out = append(out, vmNode(rec.Namespace, vm, rec.Spec.ControlPlane.ClassName, have[vm]))
	}
	return out, nil
}

// vmNode is a node of the guest cluster as its VM's record (nil: none
// yet) shows it: Ready while the VM is Ready and PoweredOn on a host.
func vmNode(ns, vm, className string, r *events.VMRecord) events.GuestNode {
	n := events.GuestNode{Name: vm, ClassName: className}
	switch {
	case r == nil:
		n.Message = fmt.Sprintf("VM %s/%s is declared and not made yet (a refusal is told by vm.rejected)", ns, vm)
	case !r.DeletionRequestedAt.IsZero():
		n.Message = fmt.Sprintf("VM %s/%s is being deleted", ns, vm)
	default:
		n.Host, n.IPs = r.Status.Host, slices.Clone(r.Status.IPs)
		n.CPUs, n.MemoryBytes = r.Size.CPUs, r.Size.MemoryMiB<<20
		n.Ready = r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == "PoweredOn" && r.Status.Host != ""
		if !n.Ready {
			n.Message = fmt.Sprintf("VM %s/%s is %s, %s", ns, vm, r.Status.Phase, orNone(r.Status.PowerState))
		}
	}
	return n
}

func orNone(s string) string {
	if s == "" {
		return "not powered on"
	}
	return s
}

// recordNodes writes the worker nodes and the control-plane VMs into the
// record when they changed.
func (s *Service) recordNodes(ctx context.Context, key string, workers, cps []events.GuestNode) error {
	ready := func(nodes []events.GuestNode) int {
		n := 0
		for _, node := range nodes {
			if node.Ready {
				n++
			}
		}
		return n
	}
	_, err := s.clusters.Mutate(ctx, key, func(r *events.GuestClusterRecord) error {
		if r.Phase == events.GuestClusterPhaseDeleting ||
			(reflect.DeepEqual(r.Workers, workers) && reflect.DeepEqual(r.ControlPlanes, cps) &&
				r.ReadyWorkers == ready(workers) && r.ReadyControlPlanes == ready(cps)) {
			return record.ErrUnchanged
		}
		r.Workers, r.ReadyWorkers = workers, ready(workers)
		r.ControlPlanes, r.ReadyControlPlanes = cps, ready(cps)
		return nil
	})
	return err
}

// refreshWorkers reads the worker nodes and the control-plane VMs and
// records them; it returns the worker nodes.
func (s *Service) refreshWorkers(ctx context.Context, rec *events.GuestClusterRecord) ([]events.GuestNode, error) {
	nodes, err := s.workerNodes(ctx, rec)
	if err != nil {
		return nil, err
	}
	cps, err := s.controlPlaneNodes(ctx, rec)
	if err != nil {
		return nil, err
	}
	return nodes, s.recordNodes(ctx, rec.Key(), nodes, cps)
}

// onVMDeleted makes a running guest cluster's worker VM again when it
// went (`podvisor delete vm`, or any client's vm.delete.requested): the
// cluster keeps spec.workers.replicas workers, as a MachineSet keeps its
// Machines. A worker VM past the count, or of a guest cluster being
// deleted or not running yet, stays gone (replaceWorkers).
func (s *Service) onVMDeleted(ctx context.Context, m *bus.Message, p *events.VMDeleted) error {
	if s.unavailable != nil || !strings.Contains(p.Name, "-worker-") {
		return nil
	}
	recs, err := s.clusters.List(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		i := workerIndex(r.Name, p.Name)
		if r.Namespace != p.Namespace || i < 0 {
			continue
		}
		if i < int(r.Spec.Workers.Replicas) && running(&r) {
			m.Log.Info("worker VM deleted; declaring it again", "guestcluster", r.Key(), "vm", p.Name)
		}
		return s.replaceWorkers(ctx, &m.Event, r.Key())
	}
	return nil
}

// replaceWorkers declares again the worker VMs of a running guest cluster
// that are missing (deleted, or their record removed) or differ from its
// spec, then records its worker nodes: one made again is not Ready (nor
// counted in ReadyWorkers) until its new VM runs. A guest cluster that is
// not running is left alone: while it is being made its request's handler
// declares its workers (and is retried until it has), and once it is
// being deleted a worker made again would outlive it. workerLocks orders
// this with the delete's mark (Deleting) in this process; across replicas
// deleteWorkers asks for the deletion of a worker VM that appears while it
// waits.
func (s *Service) replaceWorkers(ctx context.Context, cause *event.Event, key string) error {
	unlock := s.workerLocks.Lock(key)
	rec, _, err := s.clusters.Get(ctx, key)
	if err != nil || rec == nil || !running(rec) {
		unlock()
		return err
	}
	declErr := s.declareWorkers(ctx, cause, rec.Namespace, rec.Name, rec.Spec)
	unlock()
	if errors.Is(declErr, errWorkerDeleting) {
		// Declared all it could; the one being deleted is made again on
		// its own vm.deleted (or by the resync).
		declErr = nil
	}
	// The record says what runs even when a declaration failed (it is
	// retried): a worker that went is no longer counted.
	if _, err := s.refreshWorkers(ctx, rec); err != nil {
		return errors.Join(declErr, err)
	}
	return declErr
}

// deleteWorkers asks for the deletion of every worker VM and waits until
// their records are gone. A worker VM that appears while it waits (made
// again by a replica that had not seen the delete yet) is asked for
// deletion too.
func (s *Service) deleteWorkers(ctx context.Context, cause *event.Event, rec *events.GuestClusterRecord) (int, error) {
	// asked are the worker VMs asked for deletion here, by name and UID:
	// a VM made again under the same name is another VM, and another
	// request.
	asked := map[string]bool{}
	deadline := time.Now().Add(s.cfg.DeleteTimeout)
	for {
		left, err := s.workerVMs(ctx, rec.Namespace, rec.Name)
		if err != nil {
			return 0, err
		}
		for vmName, cur := range left {
			id := vmName + "/" + cur.UID
			if !cur.DeletionRequestedAt.IsZero() || asked[id] {
				continue
			}
			if err := s.out.Emit(ctx, cause, &events.VMDeleteRequested{Namespace: rec.Namespace, Name: vmName},
				bus.Distinct("delete/"+id)); err != nil {
				return 0, err
			}
			asked[id] = true
		}
		if len(left) == 0 {
			return len(asked), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d worker VMs of guest cluster %s/%s are still being deleted", len(left), rec.Namespace, rec.Name)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
