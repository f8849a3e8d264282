package guestcluster

import (
	"context"
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
// shrinks or the guest cluster is deleted. Each is a node of the guest
// cluster of the same name (podvisor-guest's Workers, fed by the node.list
// query), Ready while its VM is Ready and PoweredOn on a host; the record's
// Workers and ReadyWorkers say the same, refreshed on every node.list and
// resync.

// workerRole is the value of events.LabelGuestClusterRole on worker VMs.
const workerRole = "worker"

// workerRetry is how long a request waits for a worker VM being deleted
// (a scale-down followed by a scale-up) before declaring it again.
const workerRetry = 2 * time.Second

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
	for i := range want {
		vm := workerVM(ns, name, spec, i)
		if inVMs {
			vm.Spec.ImageName = vc.workerImage(spec)
		}
		cur := have[vm.Metadata.Name]
		switch {
		case cur != nil && !cur.DeletionRequestedAt.IsZero():
			return bus.RetryAfter(fmt.Errorf("worker VM %s/%s is still being deleted", ns, vm.Metadata.Name), workerRetry)
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
	return nil
}

// workerIndex is i of a worker VM name, -1 when it is none.
func workerIndex(cluster, vm string) int {
	_, after, ok := strings.Cut(vm, "-worker-")
	i, err := strconv.Atoi(after)
	if !ok || err != nil || events.GuestClusterWorkerName(cluster, i) != vm {
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

// deleteWorkers asks for the deletion of every worker VM and waits until
// their records are gone.
func (s *Service) deleteWorkers(ctx context.Context, cause *event.Event, rec *events.GuestClusterRecord) (int, error) {
	have, err := s.workerVMs(ctx, rec.Namespace, rec.Name)
	if err != nil {
		return 0, err
	}
	for vmName, cur := range have {
		if !cur.DeletionRequestedAt.IsZero() {
			continue
		}
		if err := s.out.Emit(ctx, cause, &events.VMDeleteRequested{Namespace: rec.Namespace, Name: vmName}, bus.Distinct("delete/"+vmName)); err != nil {
			return 0, err
		}
	}
	deadline := time.Now().Add(s.cfg.DeleteTimeout)
	for {
		left, err := s.workerVMs(ctx, rec.Namespace, rec.Name)
		if err != nil {
			return 0, err
		}
		if len(left) == 0 {
			return len(have), nil
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
