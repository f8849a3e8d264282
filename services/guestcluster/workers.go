package guestcluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
// the native VM controller makes them) on every request, each of them
// (workerPass.fresh: a VM's record may lag behind a declaration on the
// bus), and deleted (vm.delete.requested) when the count
// shrinks or the guest cluster is deleted. A running guest cluster keeps
// its count, as a MachineSet does: a worker VM that went (vm.deleted, or
// its record missing at the resync) is declared again under its name
// (replaceWorkers, which never deletes one), unless the guest cluster is
// being deleted; a VM of a guest cluster gone or being deleted is asked
// for deletion by the resync (sweepOrphanVMs). A worker whose declaration
// the native VM controller refuses (vm.rejected) is recorded Rejected and
// not declared again by the replacements until a new request or until the
// class or image it lacked exists (onVMRejected). Every declaration is
// made from the record as stored (declareWorkers). Each is a
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

// workerDecl is worker i's declaration as spec wants it, the way it is
// compared with its VM's record (sameVM): with control planes in VMs, the
// image that runs its node, and user data only once it is declared
// (VMControlPlanes.workerVM: it holds credentials minted for it).
func (s *Service) workerDecl(ns, name string, spec events.GuestClusterSpec, i int) events.VirtualMachine {
	vm := workerVM(ns, name, spec, i)
	if vc, ok := s.cps.(*VMControlPlanes); ok {
		vm.Spec.ImageName = vc.workerImage(spec)
	}
	return vm
}

// workerPass says how declareWorkers acts. Every pass declares from the
// record as stored, read again under workerLocks, never from a spec its
// caller holds: a request's message, or what the resync listed, may be
// older than what another replica stored since.
type workerPass struct {
	// request, in a request's handler: its generation. The pass declares
	// every worker of the spec (fresh), refused before or not (a new
	// request is a new try), asks for the deletion of those
	// past the count, and stops (errSuperseded) once the record holds a
	// newer request's spec. Without it the pass only declares (a worker
	// past the count is a request's handler's to delete: a newer spec may
	// want it), and leaves a worker whose declaration was refused at this
	// generation until what the refusal found missing exists.
	request *generation
	// running: declare only while the guest cluster runs (replaceWorkers:
	// while it is being made its request's handler declares its workers,
	// and is retried until it has; once it is being deleted a worker made
	// again would outlive it).
	running bool
	// follow: the pass follows a newer request stored after an earlier
	// pass of the same call read the record (declareWorkers). It declares
	// only a generation its own handler admitted (admitted: found
	// compatible, of a version this podvisor runs, not Failed); one not
	// admitted yet is left to its handler, which declares it once it is.
	follow bool
}

// fresh reports whether the pass declares every wanted worker, whatever
// its VM's record holds: a request's pass and a pass that follows one. The
// VM record lags behind the declarations still on the bus (another
// replica's, of an older spec, may reach the native VM controller after
// the record was read), so it is no proof that the newest declaration is
// the last one applied; declaring again is, since the native VM
// controller makes no change for a declaration the VM already has. A
// replacement pass trusts the record: it declares what went or differs,
// and follows when the record moved under it.
func (p workerPass) fresh() bool { return p.request != nil || p.follow }

// maxFollow bounds the passes declareWorkers makes after the record moved
// under it (followed).
const maxFollow = 3

// declareWorkers makes the worker VMs match the record's spec.workers: it
// declares those missing or different (every one in a request's pass or a
// follow: workerPass.fresh) and (in a request's pass) asks for
// the deletion of those past the count. A wanted VM still being deleted
// makes a request wait.
//
// workerLocks is held only around reading the record and the VMs again,
// deciding and emitting: what can take long (the wait for the
// control-plane image the worker VMs boot, up to ReadyTimeout; minting the
// guest cluster's credentials) is done outside it, then the pass begins
// again. Under the lock, a guest cluster being deleted (or gone) gets no
// worker: its delete's mark is taken under the same lock.
//
// workerLocks orders nothing across replicas: another replica may store a
// newer request after this pass read the record, and declare from it
// before this pass's declarations reach the bus, which would leave this
// pass's (older) declarations the last the native VM controller reads. So
// a pass that declared reads the record again, and when its generation
// moved declares (only) from the newer one: the last declarations of a
// worker are then always the newest spec's. A request's pass that had to
// follow a newer request ends in errSuperseded.
func (s *Service) declareWorkers(ctx context.Context, cause *event.Event, ns, name string, pass workerPass) error {
	key := events.GuestClusterRecordKey(ns, name)
	vc, _ := s.cps.(*VMControlPlanes)
	request := pass.request != nil
	var prep workerPrep
	// emitted: a pass of this call published; from then on every pass
	// reads the record again after it, since what was published may be
	// older than a spec stored meanwhile.
	emitted := false
	for follows := 0; ; {
		unlock := s.workerLocks.Lock(key)
		done, err := s.declareWorkersLocked(ctx, cause, key, ns, name, pass, prep)
		unlock()
		if err != nil {
			return err
		}
		if done.prepare != nil {
			if err := vc.workerImageReady(ctx, *done.prepare); err != nil {
				return fmt.Errorf("worker VMs of %s: %w", key, err)
			}
			prep.image = vc.workerImage(*done.prepare)
			if prep.creds == "" {
				if prep.creds, err = s.minter.MintGuest(ns, name); err != nil {
					return fmt.Errorf("identity of %s: %w", key, err)
				}
			}
			continue
		}
		emitted = emitted || done.emitted
		if f := s.passEmitted.Load(); done.emitted && f != nil {
			(*f)(key)
		}
		if emitted && follows < maxFollow {
			cur, _, err := s.clusters.Get(ctx, key)
			if err != nil {
				return err
			}
			if cur != nil && cur.Generation != done.generation {
				// A follow deletes nothing (a worker past the count is
				// the newer request's handler's to delete) and keeps
				// the running guard of a replacement.
				follows++
				pass = workerPass{running: pass.running, follow: true}
				continue
			}
		}
		switch {
		case request && pass.request == nil:
			return errSuperseded
		case request && done.deleting != "":
			return bus.RetryAfter(fmt.Errorf("worker VM %s/%s is %w", ns, done.deleting, errWorkerDeleting), workerRetry)
		}
		// A replacement pass declared all it could; a worker being
		// deleted is made again on its own vm.deleted (or by the resync).
		return nil
	}
}

// workerPrep is what declareWorkers got outside workerLocks for worker
// VMs that run their node: the image they boot is ready, the credentials.
type workerPrep struct {
	image string
	creds string
}

// workerDecls is what a declareWorkersLocked pass did.
type workerDecls struct {
	// generation is that of the record the pass declared from.
	generation uint64
	// emitted: the pass published declarations or deletions.
	emitted bool
	// deleting names a wanted VM still being deleted.
	deleting string
	// prepare: a VM is to be declared and prep lacks what its declaration
	// needs for this spec; the caller gets it without the lock and calls
	// again.
	prepare *events.GuestClusterSpec
}

// declareWorkersLocked is declareWorkers' pass under workerLocks.
func (s *Service) declareWorkersLocked(ctx context.Context, cause *event.Event, key, ns, name string,
	pass workerPass, prep workerPrep) (workerDecls, error) {
	var out workerDecls
	have, err := s.workerVMs(ctx, ns, name)
	if err != nil {
		return out, err
	}
	// The record, read after the VMs: a newer spec written before this
	// read is seen here, whenever its workers were declared.
	rec, _, err := s.clusters.Get(ctx, key)
	switch {
	case err != nil:
		return out, err
	case (rec == nil || rec.Phase == events.GuestClusterPhaseDeleting) && pass.request == nil:
		return out, nil
	case pass.request != nil && (rec == nil || rec.supersedes(*pass.request)):
		// A newer request, or a delete stored after this one (which took
		// the record's generation, and may have removed the record by
		// now: an older delete does neither, the request superseding it).
		return out, errSuperseded
	case rec.Phase == events.GuestClusterPhaseDeleting:
		return out, bus.Permanent(bus.WithReason("Deleting", fmt.Errorf("guest cluster %s was deleted while its workers were declared", key)))
	}
	// Set before the passes that leave this record alone: declareWorkers
	// follows only when the record moves past it.
	out.generation = rec.Generation
	switch {
	case pass.running && !running(&rec.GuestClusterRecord):
		return out, nil
	case pass.follow && !admitted(rec):
		// Nothing is built before its version is found compatible:
		// its handler declares it once it is, or fails it.
		return out, nil
	}
	spec := rec.Spec
	want := int(spec.Workers.Replicas)
	vc, inVMs := s.cps.(*VMControlPlanes)
	var vms []events.VirtualMachine
	for i := range want {
		vm := s.workerDecl(ns, name, spec, i)
		cur := have[vm.Metadata.Name]
		switch {
		case cur != nil && !cur.DeletionRequestedAt.IsZero():
			// The others are declared all the same, and a request
			// waits for it.
			out.deleting = vm.Metadata.Name
			continue
		case cur != nil && sameVM(cur, vm, !inVMs) && !pass.fresh():
			continue
		}
		if f, refused := rec.RefusedWorkers[vm.Metadata.Name]; refused && pass.request == nil {
			// Declaring it again would be refused again (vm.rejected at
			// every resync, forever) unless what it lacked exists now.
			lifted, err := s.lifted(ctx, f, vm)
			if err != nil {
				return out, err
			}
			if !lifted {
				continue
			}
		}
		switch {
		case inVMs && cur != nil && sameVM(cur, vm, false):
			// Declared again as the VM has it: its user data holds the
			// credentials minted for its node then, and is not made
			// anew (which the native VM controller would take for a
			// change).
			vm.Spec.UserData = cur.Spec.UserData
		case inVMs:
			if prep.image != vm.Spec.ImageName || prep.creds == "" {
				return workerDecls{prepare: &spec}, nil
			}
			if vm, err = vc.workerVM(ctx, ns, name, spec, i, prep.creds); err != nil {
				return out, fmt.Errorf("worker VM %s/%s: %w", ns, vm.Metadata.Name, err)
			}
		}
		vms = append(vms, vm)
	}
	for _, vm := range vms {
		// The generation is part of the effect's id: a pass that follows
		// a newer request within the same handler (same cause) declares
		// another spec, which JetStream must not take for a duplicate of
		// the first; a redelivery declares the same again, which it must.
		disc := fmt.Sprintf("%s@%d", vm.Metadata.Name, out.generation)
		if err := s.out.Emit(ctx, cause, &events.VMDeclared{VM: vm}, bus.Distinct(disc)); err != nil {
			return out, err
		}
		out.emitted = true
	}
	for vmName, cur := range have {
		if pass.request == nil || workerIndex(name, vmName) < want || !cur.DeletionRequestedAt.IsZero() {
			continue
		}
		if err := s.out.Emit(ctx, cause, &events.VMDeleteRequested{Namespace: ns, Name: vmName}, bus.Distinct("delete/"+vmName)); err != nil {
			return out, err
		}
		out.emitted = true
	}
	return out, nil
}

// lifted reports whether what a refusal found missing exists now (the
// native VM controller's record of the class or image decl names): the
// declaration may succeed, and is made again. These records are what the
// native VM controller admits a declaration against, so they are what
// this controller watches; a refusal of nothing missing (an invalid
// field, a declaration that ran out of deliveries) waits for a new
// request.
func (s *Service) lifted(ctx context.Context, f workerRefusal, decl events.VirtualMachine) (bool, error) {
	switch kind, name := f.missing(decl); kind {
	case events.KindVirtualMachineClass:
		r, _, err := s.classes.Get(ctx, name)
		return r != nil, err
	case events.KindVirtualMachineImage:
		r, _, err := s.images.Get(ctx, name)
		return r != nil, err
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

// workerView is the worker nodes of a record's spec as the VM records show
// them, with what recordNodes needs to tell refusals.
type workerView struct {
	// generation is that of the record whose spec the view is of.
	generation uint64
	// nodes, in index order, and decls, each node's declaration.
	nodes []events.GuestNode
	decls []events.VirtualMachine
	// made: the worker's VM exists (not being deleted); accepted: it has
	// the declaration the spec wants, so a refusal of it is past.
	made, accepted map[string]bool
}

// workerNodes are the worker nodes as the VM records show them, in index
// order.
func (s *Service) workerNodes(ctx context.Context, rec *clusterRecord) (workerView, error) {
	have, err := s.workerVMs(ctx, rec.Namespace, rec.Name)
	if err != nil {
		return workerView{}, err
	}
	vc, inVMs := s.cps.(*VMControlPlanes)
	if inVMs {
		vc.connectWorkersSoon(rec.Namespace, rec.Name, have)
	}
	v := workerView{generation: rec.Generation, made: map[string]bool{}, accepted: map[string]bool{}}
	for i := range int(rec.Spec.Workers.Replicas) {
		vm := events.GuestClusterWorkerName(rec.Name, i)
		decl := s.workerDecl(rec.Namespace, rec.Name, rec.Spec, i)
		r := have[vm]
		v.nodes = append(v.nodes, vmNode(rec.Namespace, vm, rec.Spec.Workers.ClassName, r))
		v.decls = append(v.decls, decl)
		if r != nil && r.DeletionRequestedAt.IsZero() {
			v.made[vm], v.accepted[vm] = true, sameVM(r, decl, !inVMs)
		}
	}
	return v, nil
}

// told are the view's nodes with each refused worker's refusal told.
func (v workerView) told(refused map[string]workerRefusal) []events.GuestNode {
	out := slices.Clone(v.nodes)
	for i := range out {
		if f, ok := refused[out[i].Name]; ok {
			out[i].Message = f.tell(v.decls[i], v.made[out[i].Name])
		}
	}
	return out
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
			// And why, when its controller says (no host fits:
			// Scheduled=False, Unschedulable), rather than a silent wait.
			for _, c := range r.Status.Conditions {
				if c.Status == events.ConditionFalse {
					n.Message += fmt.Sprintf(" (%s=False, %s: %s)", c.Type, c.Reason, c.Message)
					break
				}
			}
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

// namedRefusal is a refusal of worker VM vm's declaration, to record.
type namedRefusal struct {
	vm string
	workerRefusal
}

// recordNodes writes the worker nodes and the control-plane VMs into the
// record when they changed, with each refused worker's refusal told on its
// node and in condition WorkersAccepted; it returns the worker nodes as
// written. A refusal is past once its worker is past the count or its VM
// has the declaration the spec wants. add, when set, is a refusal to
// record first: only against the spec the view is of (a newer request
// declares anew: the refusal may be of an older declaration).
func (s *Service) recordNodes(ctx context.Context, key string, v workerView, cps []events.GuestNode, add *namedRefusal) ([]events.GuestNode, error) {
	ready := func(nodes []events.GuestNode) int {
		n := 0
		for _, node := range nodes {
			if node.Ready {
				n++
			}
		}
		return n
	}
	workers := v.nodes
	_, err := s.clusters.Mutate(ctx, key, func(r *clusterRecord) error {
		workers = v.nodes
		// A view of an older spec than the record's says nothing of it
		// (nor does a refusal found against it): the newer request
		// declares anew, and its pass or the next refresh records it.
		if r.Phase == events.GuestClusterPhaseDeleting || r.Generation != v.generation {
			return record.ErrUnchanged
		}
		refused := maps.Clone(r.RefusedWorkers)
		if add != nil && workerIndex(r.Name, add.vm) < int(r.Spec.Workers.Replicas) {
			if refused == nil {
				refused = map[string]workerRefusal{}
			}
			refused[add.vm] = add.workerRefusal
		}
		for vm := range refused {
			i := workerIndex(r.Name, vm)
			if i < 0 || i >= int(r.Spec.Workers.Replicas) || v.accepted[vm] {
				delete(refused, vm)
			}
		}
		if len(refused) == 0 {
			refused = nil
		}
		workers = v.told(refused)
		before := r.RefusedWorkers
		r.RefusedWorkers = refused
		condChanged := setWorkersAccepted(r, workers, time.Now().UTC())
		if !condChanged && maps.Equal(before, refused) &&
			reflect.DeepEqual(r.Workers, workers) && reflect.DeepEqual(r.ControlPlanes, cps) &&
			r.ReadyWorkers == ready(workers) && r.ReadyControlPlanes == ready(cps) {
			return record.ErrUnchanged
		}
		r.Workers, r.ReadyWorkers = workers, ready(workers)
		r.ControlPlanes, r.ReadyControlPlanes = cps, ready(cps)
		return nil
	})
	return workers, err
}

// setWorkersAccepted sets condition WorkersAccepted from the record's
// refused workers, told in nodes (in index order): False with the first
// refusal's reason and every refused worker's node message; True once none
// is, when the condition was ever set (a guest cluster none of whose
// workers was refused does not carry it). It reports a change.
func setWorkersAccepted(r *clusterRecord, nodes []events.GuestNode, now time.Time) bool {
	var reason string
	var msgs []string
	for _, n := range nodes {
		if f, ok := r.RefusedWorkers[n.Name]; ok {
			if reason == "" {
				reason = f.Reason
			}
			msgs = append(msgs, n.Name+": "+n.Message)
		}
	}
	if len(msgs) > 0 {
		return r.SetCondition(conditionWorkersAccepted, events.ConditionFalse, reason, strings.Join(msgs, "; "), now)
	}
	if !slices.ContainsFunc(r.Conditions, func(c events.PodCondition) bool { return c.Type == conditionWorkersAccepted }) {
		return false
	}
	return r.SetCondition(conditionWorkersAccepted, events.ConditionTrue, "Accepted", "", now)
}

// refreshWorkers reads the worker nodes and the control-plane VMs and
// records them; it returns the worker nodes.
func (s *Service) refreshWorkers(ctx context.Context, rec *clusterRecord) ([]events.GuestNode, error) {
	v, err := s.workerNodes(ctx, rec)
	if err != nil {
		return nil, err
	}
	cps, err := s.controlPlaneNodes(ctx, &rec.GuestClusterRecord)
	if err != nil {
		return nil, err
	}
	return s.recordNodes(ctx, rec.Key(), v, cps, nil)
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
		if i < int(r.Spec.Workers.Replicas) && running(&r.GuestClusterRecord) {
			m.Log.Info("worker VM deleted; declaring it again", "guestcluster", r.Key(), "vm", p.Name)
		}
		return s.replaceWorkers(ctx, &m.Event, r.Key())
	}
	return nil
}

// onVMRejected records the native VM controller's refusal of a worker
// VM's declaration (vm.rejected: a class or image that does not exist, an
// invalid field) on its guest cluster's record: the worker's node says
// Rejected with the refusal's reason, field and message, condition
// WorkersAccepted is False naming it, and the replacement passes (resync,
// vm.deleted) do not declare it again, to be refused again, until a new
// request of the guest cluster or until what the refusal found missing
// exists: as a cluster-api MachineSet leaves a Machine whose
// infrastructure was refused Failed, saying why, rather than making it
// again in a loop. The refusal is kept in the record, so every replica
// (and the next process) knows it.
func (s *Service) onVMRejected(ctx context.Context, m *bus.Message, p *events.VMRejected) error {
	if s.unavailable != nil || p.Kind != events.KindVirtualMachine || !strings.Contains(p.Name, "-worker-") {
		return nil
	}
	// Not the refusal of a declaration to wait on: a VM being deleted
	// (its vm.deleted has it declared again), or a deletion asked for a
	// VM that is gone (field name: this controller asks for the deletion
	// of workers past the count).
	if p.Reason == vmReasonDeleting || p.Field == "name" {
		return nil
	}
	recs, err := s.clusters.List(ctx)
	if err != nil {
		return err
	}
	for i := range recs {
		r := &recs[i]
		idx := workerIndex(r.Name, p.Name)
		if r.Namespace != p.Namespace || idx < 0 {
			continue
		}
		if r.Phase == events.GuestClusterPhaseDeleting || idx >= int(r.Spec.Workers.Replicas) {
			return nil
		}
		v, err := s.workerNodes(ctx, r)
		if err != nil {
			return err
		}
		if v.accepted[p.Name] {
			// Its VM has the declaration the spec wants: this refusal
			// was of an earlier one.
			return nil
		}
		cps, err := s.controlPlaneNodes(ctx, &r.GuestClusterRecord)
		if err != nil {
			return err
		}
		m.Log.Info("worker VM refused; declared again on the next request or once what it lacks exists",
			"guestcluster", r.Key(), "vm", p.Name, "reason", p.Reason, "field", p.Field, "message", p.Message)
		_, err = s.recordNodes(ctx, r.Key(), v, cps, &namedRefusal{vm: p.Name,
			workerRefusal: workerRefusal{Reason: p.Reason, Field: p.Field, Message: p.Message}})
		return err
	}
	return nil
}

// replaceWorkers declares again the worker VMs of a running guest cluster
// that are missing (deleted, or their record removed) or differ from its
// spec, but those refused at this generation whose refusal still stands
// (onVMRejected), then records its worker nodes: one made again is not
// Ready (nor counted in ReadyWorkers) until its new VM runs. It never
// deletes a worker (one past the count is its request's handler's to
// delete): a newer spec than the one its pass read may have declared
// more. Its pass declares from the record read again under workerLocks. A
// guest cluster that is not running is left alone: while it is being made
// its request's handler declares its workers (and is retried until it
// has), and once it is being deleted a worker made again would outlive
// it. workerLocks orders this with the delete's mark (Deleting) in this
// process; across replicas deleteWorkers asks for the deletion of a worker
// VM that appears while it waits, and the resync's sweepOrphanVMs of one
// that appears later.
func (s *Service) replaceWorkers(ctx context.Context, cause *event.Event, key string) error {
	rec, _, err := s.clusters.Get(ctx, key)
	if err != nil || rec == nil || !running(&rec.GuestClusterRecord) {
		return err
	}
	declErr := s.declareWorkers(ctx, cause, rec.Namespace, rec.Name, workerPass{running: true})
	// The record says what runs even when a declaration failed (it is
	// retried): a worker that went is no longer counted.
	rec, _, err = s.clusters.Get(ctx, key)
	if err != nil || rec == nil {
		return errors.Join(declErr, err)
	}
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
