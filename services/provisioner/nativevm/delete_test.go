package nativevm_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/shared/bus"
)

// A delete whose handler died after it marked the record Deleting (and
// powered the VM off) is finished by the drift repair: two replicas
// passing at once destroy the VM, remove the record and announce
// vm.deleted once between them. The delete request, delivered again
// afterwards, finds the delete done: no "not found" refusal.
func TestResyncFinishesADeleteLeftHalfDone(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	r := e.runOn(vmDecl("small", ""), e.dc.Hosts()[0])
	vm := e.vm(r)
	del := &events.VMDeleteRequested{Namespace: r.Namespace, Name: r.Name}
	// The request that was being handled: stored (where the stream is
	// now), not delivered to the running controller.
	before := e.lastSeq()
	if _, err := e.vms.Mutate(ctx, events.VMRecordKey(r.Namespace, r.Name), func(r *events.VMRecord) error {
		r.DeletionRequestedAt, r.Status.Phase = time.Now().UTC(), events.VMPhaseDeleting
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.powerOff(vm)

	other, err := nativevm.New(ctx, e.cfg, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	passes := make([]map[string]int, 2)
	for i, c := range []*nativevm.Controller{e.ctl, other} {
		wg.Go(func() {
			var err error
			if passes[i], err = c.Resync(ctx); err != nil {
				t.Errorf("replica %d: Resync: %v", i, err)
			}
		})
	}
	wg.Wait()
	if n := passes[0][nativevm.RepairDelete] + passes[1][nativevm.RepairDelete]; n != 1 {
		t.Fatalf("passes %v: %d deletes finished, want 1", passes, n)
	}
	if rec, _, err := e.vms.Get(ctx, events.VMRecordKey(r.Namespace, r.Name)); err != nil || rec != nil {
		t.Errorf("record after the pass: %+v, %v; want it gone", rec, err)
	}
	if _, err := find.NewFinder(e.s.Vim(), true).VirtualMachine(ctx, "/*/vm/podvisor-vms/team-a/"+events.NativeVMName(r.UID)); err == nil {
		t.Error("the VM is still in vCenter after the pass")
	}
	deleted := stored[events.VMDeleted](e, del.ObjectKey(), before)
	if len(deleted) != 1 {
		t.Errorf("vm.deleted announced %d times, want once", len(deleted))
	}

	if err := e.ctl.Deliver(ctx, e.eventOf("podvisor/cli", del), before, del); err != nil {
		t.Errorf("the delete request delivered again: %v", err)
	}
	if rj := stored[events.VMRejected](e, del.ObjectKey(), before); len(rj) != 0 {
		t.Errorf("the delete request delivered again was refused (%d vm.rejected); want it taken as done", len(rj))
	}
	if repaired, err := e.ctl.Resync(ctx); err != nil || len(repaired) != 0 {
		t.Errorf("a second pass: %v, %v; want nothing to repair", repaired, err)
	}
}

// A declaration delivered again after its VM's delete (its handler died
// before the ack, or it waited for a retry) makes nothing: the delete,
// stored after it, outranks it. A declaration stored after the delete is
// a new one, and makes a new VM.
func TestADeclarationDeliveredAgainAfterTheDeleteMakesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	decl := vmDecl("small", "")
	ev, seq := e.publishSeq("podvisor/cli", decl)
	first := e.waitRecord("accepted", func(r *events.VMRecord) bool { return r.Generation == 1 })
	e.place(first, e.dc.Hosts()[0])
	e.waitRecord("Ready", func(r *events.VMRecord) bool { return r.Status.Phase == events.VMPhaseReady })
	e.publish("podvisor/cli", &events.VMDeleteRequested{Namespace: first.Namespace, Name: first.Name})
	e.waitGone(first.Namespace, first.Name)

	if err := e.ctl.Deliver(ctx, ev, seq, decl); err != nil {
		t.Fatalf("the declaration delivered again: %v", err)
	}
	if rec, _, err := e.vms.Get(ctx, events.VMRecordKey(first.Namespace, first.Name)); err != nil || rec != nil {
		t.Fatalf("after the declaration delivered again: record %+v, %v; want none", rec, err)
	}

	e.publish("podvisor/cli", decl)
	again := e.waitRecord("declared anew", func(r *events.VMRecord) bool { return r.Generation == 1 })
	if again.UID == first.UID {
		t.Errorf("the VM declared anew has the deleted VM's uid %s", first.UID)
	}
	e.place(again, e.dc.Hosts()[0])
	e.waitRecord("Ready", func(r *events.VMRecord) bool { return r.Status.Phase == events.VMPhaseReady })
	e.vm(again)
}

// lastSeq is the sequence of the last event the VMS stream stored.
func (e *env) lastSeq() uint64 {
	e.t.Helper()
	s, err := e.bus.JetStream().Stream(context.Background(), events.StreamVMs)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// stored lists the sequences of the events of type T about the VM key
// that the VMS stream stored after sequence after.
func stored[T any, P interface {
	*T
	events.Payload
}](e *env, key string, after uint64) []uint64 {
	e.t.Helper()
	var out []uint64
	for {
		m, err := bus.StoredAfter[T, P](context.Background(), e.bus.JetStream(), key, after, nil)
		if err != nil {
			e.t.Fatal(err)
		}
		if m == nil {
			return out
		}
		out, after = append(out, m.Sequence), m.Sequence
	}
}

// waitGone waits until the record of VM namespace/name is gone.
func (e *env) waitGone(namespace, name string) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec, _, err := e.vms.Get(context.Background(), events.VMRecordKey(namespace, name))
		if err != nil {
			e.t.Fatal(err)
		}
		if rec == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("record of %s/%s still there: %+v", namespace, name, rec.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A delete delivered again after its VM was deleted and the name declared
// anew (its handler died before the ack, a durable replays the stream)
// leaves the new VM alone: the delete was stored before the declaration
// the record holds (DeclaredSeq), so it was about the earlier VM, whose
// vm.deleted follows it; it is acknowledged, refused for nothing.
func TestADeleteDeliveredAgainAfterTheVMIsDeclaredAgainLeavesTheNewVM(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	first := e.runOn(vmDecl("small", ""), e.dc.Hosts()[0])
	del := &events.VMDeleteRequested{Namespace: first.Namespace, Name: first.Name}
	ev, seq := e.publishSeq("podvisor/cli", del)
	e.waitGone(first.Namespace, first.Name)

	again := e.runOn(vmDecl("small", ""), e.dc.Hosts()[0])
	if again.UID == first.UID || again.DeclaredSeq <= seq {
		t.Fatalf("VM declared anew: uid %s (the deleted one's %s), declared at %d (the delete at %d)", again.UID, first.UID, again.DeclaredSeq, seq)
	}
	if err := e.ctl.Deliver(ctx, ev, seq, del); err != nil {
		t.Fatalf("the earlier VM's delete delivered again: %v; want it acknowledged", err)
	}
	rec, _, err := e.vms.Get(ctx, events.VMRecordKey(again.Namespace, again.Name))
	if err != nil || rec == nil || rec.UID != again.UID || !rec.DeletionRequestedAt.IsZero() || rec.Status.Phase != events.VMPhaseReady {
		t.Fatalf("after the earlier VM's delete delivered again: record %+v, %v; want the new VM %s Ready", rec, err, again.UID)
	}
	if power, err := e.vm(again).PowerState(ctx); err != nil || power != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("the new VM is %s (%v), want on", power, err)
	}
	if rj := stored[events.VMRejected](e, del.ObjectKey(), seq); len(rj) != 0 {
		t.Errorf("the earlier VM's delete delivered again was refused (%d vm.rejected); want it taken as done", len(rj))
	}
}

// TestAnOlderDeclarationDeliveredAgainLeavesTheNewerSpec: a declaration
// stored before the one the VM holds, delivered again after it, changes
// nothing: the newer spec stands.
func TestAnOlderDeclarationDeliveredAgainLeavesTheNewerSpec(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	older := vmDecl("small", "")
	ev, seq := e.publishSeq("podvisor/cli", older)
	e.waitRecord("accepted", func(r *events.VMRecord) bool { return r.Generation == 1 })
	newer := vmDecl("small", "")
	newer.VM.Spec.UserData = "#cloud-config\n"
	e.publish("podvisor/cli", newer)
	held := e.waitRecord("the newer spec", func(r *events.VMRecord) bool { return r.Generation == 2 && r.DeclaredSeq > seq })

	if err := e.ctl.Deliver(ctx, ev, seq, older); err != nil {
		t.Fatalf("the older declaration delivered again: %v", err)
	}
	rec, _, err := e.vms.Get(ctx, events.VMRecordKey(held.Namespace, held.Name))
	if err != nil || rec == nil || rec.Generation != held.Generation || rec.Spec.UserData != newer.VM.Spec.UserData {
		t.Fatalf("after the older declaration delivered again: record %+v, %v; want generation %d with the newer user data", rec, err, held.Generation)
	}
}
