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
// (replaceWorkers, which never deletes one), unless the guest cluster is
// being deleted; a VM of a guest cluster gone or being deleted is asked
// for deletion by the resync (sweepOrphanVMs). Each is a
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

// workerPass says how declareWorkers acts.
type workerPass struct {
	// replace: a pass of replaceWorkers, on the spec the record had when
	// it began: it only declares (a worker past the count is the
	// request's handler's to delete), and it is dropped (errSpecMoved)
	// when the record's spec is no longer that one or the guest cluster
	// no longer runs, for a newer request (on another replica, say) may
	// have declared workers this pass would undo.
	replace bool
}

// errSpecMoved drops a replaceWorkers pass: the record's spec changed (or
// the guest cluster stopped running) while the pass read the worker VMs.
var errSpecMoved = errors.New("the guest cluster's spec changed meanwhile")

// declareWorkers makes the worker VMs match spec.workers: it declares
// those missing or different and (but in a replace pass) asks for the
// deletion of those past the count. A wanted VM still being deleted makes
// the request wait.
//
// workerLocks is held only around reading the record and the VMs again,
// deciding and emitting: what can take long (the wait for the
// control-plane image the worker VMs boot, up to ReadyTimeout; minting the
// guest cluster's credentials) is done outside it, then the pass begins
// again. Under the lock, a guest cluster being deleted (or gone) gets no
// worker: its delete's mark is taken under the same lock.
func (s *Service) declareWorkers(ctx context.Context, cause *event.Event, ns, name string, spec events.GuestClusterSpec, pass workerPass) error {
	key := events.GuestClusterRecordKey(ns, name)
	vc, inVMs := s.cps.(*VMControlPlanes)
	// With control planes in VMs, each worker VM runs its own node, and
	// its declaration needs the image ready and the credentials.
	prep := workerPrep{ready: !inVMs}
	for {
		unlock := s.workerLocks.Lock(key)
		more, err := s.declareWorkersLocked(ctx, cause, key, ns, name, spec, pass, prep)
		unlock()
		if err != nil || !more {
			return err
		}
		if !prep.ready {
			if err := vc.workerImageReady(ctx, spec); err != nil {
				return fmt.Errorf("worker VMs of %s: %w", key, err)
			}
			prep.ready = true
		}
		if prep.creds == "" {
			if prep.creds, err = s.minter.MintGuest(ns, name); err != nil {
				return fmt.Errorf("identity of %s: %w", key, err)
			}
		}
	}
}

// workerPrep is what declareWorkers got outside workerLocks for worker
// VMs that run their node: the image is ready, the credentials.
type workerPrep struct {
	ready bool
	creds string
}

// declareWorkersLocked is declareWorkers' pass under workerLocks. It
// returns more when a VM is to be declared and prep lacks what its
// declaration needs: the caller gets it without the lock and calls again.
func (s *Service) declareWorkersLocked(ctx context.Context, cause *event.Event, key, ns, name string,
	spec events.GuestClusterSpec, pass workerPass, prep workerPrep) (more bool, err error) {
	have, err := s.workerVMs(ctx, ns, name)
	if err != nil {
		return false, err
	}
	// The record, read after the VMs: a newer spec written before this
	// read is seen here, whenever its workers were declared.
	rec, _, err := s.clusters.Get(ctx, key)
	switch {
	case err != nil:
		return false, err
	case pass.replace && (rec == nil || !running(rec) || !reflect.DeepEqual(rec.Spec, spec)):
		return false, errSpecMoved
	case rec == nil || rec.Phase == events.GuestClusterPhaseDeleting:
		return false, bus.Permanent(bus.WithReason("Deleting", fmt.Errorf("guest cluster %s was deleted while its workers were declared", key)))
	}
	want := int(spec.Workers.Replicas)
	vc, inVMs := s.cps.(*VMControlPlanes)
	var vms []events.VirtualMachine
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
			if !prep.ready || prep.creds == "" {
				return true, nil
			}
			if vm, err = vc.workerVM(ctx, ns, name, spec, i, prep.creds); err != nil {
				return false, fmt.Errorf("worker VM %s/%s: %w", ns, vm.Metadata.Name, err)
			}
		}
		vms = append(vms, vm)
	}
	for _, vm := range vms {
		if err := s.out.Emit(ctx, cause, &events.VMDeclared{VM: vm}, bus.Distinct(vm.Metadata.Name)); err != nil {
			return false, err
		}
	}
	for vmName, cur := range have {
		if pass.replace || workerIndex(name, vmName) < want || !cur.DeletionRequestedAt.IsZero() {
			continue
		}
		if err := s.out.Emit(ctx, cause, &events.VMDeleteRequested{Namespace: ns, Name: vmName}, bus.Distinct("delete/"+vmName)); err != nil {
			return false, err
		}
	}
	if deleting != "" {
		return false, bus.RetryAfter(fmt.Errorf("worker VM %s/%s is %w", ns, deleting, errWorkerDeleting), workerRetry)
	}
	return false, nil
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
// counted in ReadyWorkers) until its new VM runs. It never deletes a
// worker (one past the count is its request's handler's to delete): it
// acts on the spec it read, and a newer one may have declared more. A pass
// whose spec moved while it read the VMs is dropped and begins again on
// the new one. A guest cluster that is not running is left alone: while
// it is being made its request's handler declares its workers (and is
// retried until it has), and once it is being deleted a worker made again
// would outlive it. workerLocks orders this with the delete's mark
// (Deleting) in this process; across replicas deleteWorkers asks for the
// deletion of a worker VM that appears while it waits, and the resync's
// sweepOrphanVMs of one that appears later.
func (s *Service) replaceWorkers(ctx context.Context, cause *event.Event, key string) error {
	for range 3 {
		rec, _, err := s.clusters.Get(ctx, key)
		if err != nil || rec == nil || !running(rec) {
			return err
		}
		declErr := s.declareWorkers(ctx, cause, rec.Namespace, rec.Name, rec.Spec, workerPass{replace: true})
		if errors.Is(declErr, errSpecMoved) {
			continue
		}
		if errors.Is(declErr, errWorkerDeleting) {
			// Declared all it could; the one being deleted is made again
			// on its own vm.deleted (or by the resync).
			declErr = nil
		}
		// The record says what runs even when a declaration failed (it
		// is retried): a worker that went is no longer counted.
		if _, err := s.refreshWorkers(ctx, rec); err != nil {
			return errors.Join(declErr, err)
		}
		return declErr
	}
	// The spec keeps changing: its requests' handlers declare its
	// workers, and the next resync looks again.
	s.log.Info("worker replacement dropped: the spec changed while it ran", "guestcluster", key)
	return nil
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

// sweepOrphanVMs asks for the deletion of every VM labelled with a guest
// cluster (events.LabelGuestCluster) whose record is gone or Deleting, of
// the guest cluster only when set: a worker declared just before its
// guest cluster's delete (replaceWorkers, a request on another replica)
// can be made by the native VM controller after deleteWorkers found none
// and the record went, and then nothing else would delete it. The
// request's id derives from the VM's UID (orphanCause), so replicas and
// passes that sweep the same VM publish one request. It returns how many
// it asked for.
func (s *Service) sweepOrphanVMs(ctx context.Context, only *events.GuestClusterRef) (int, error) {
	// The VMs first: a guest cluster's record is written before its VMs
	// are declared, so one whose VM is listed here is listed below
	// unless it went meanwhile.
	vms, err := s.vms.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list VMs: %w", err)
	}
	recs, err := s.clusters.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("list guest clusters: %w", err)
	}
	alive := map[string]bool{}
	for _, r := range recs {
		alive[r.Key()] = r.Phase != events.GuestClusterPhaseDeleting
	}
	n := 0
	for i := range vms {
		v := &vms[i]
		gc := v.Labels[events.LabelGuestCluster]
		switch {
		case gc == "" || !v.DeletionRequestedAt.IsZero():
			continue
		case only != nil && (v.Namespace != only.Namespace || gc != only.Name):
			continue
		case alive[events.GuestClusterRecordKey(v.Namespace, gc)]:
			continue
		}
		cause := orphanCause(v)
		if err := s.out.Emit(ctx, &cause, &events.VMDeleteRequested{Namespace: v.Namespace, Name: v.Name}); err != nil {
			return n, err
		}
		s.log.Info("VM of a guest cluster gone or being deleted; asked for its deletion",
			"guestcluster", events.GuestClusterRecordKey(v.Namespace, gc), "vm", v.Namespace+"/"+v.Name, "uid", v.UID)
		n++
	}
	return n, nil
}

// orphanCause is the cause sweepOrphanVMs' deletion request of a VM
// derives its id from: the same for every sweep of that VM (by UID: a VM
// made again under its name is another).
func orphanCause(v *events.VMRecord) event.Event {
	c := event.New()
	c.SetID(fmt.Sprintf("guestcluster/orphan/%s/%s/%s", v.Namespace, v.Name, v.UID))
	return c
}
