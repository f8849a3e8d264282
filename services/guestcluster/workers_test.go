package guestcluster

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// putWorkerVM writes the native VM controller's record of a declared
// worker VM: Ready and PoweredOn on host when ready, Creating otherwise.
func (h *harness) putWorkerVM(t *testing.T, d *events.VMDeclared, host string, ready bool) {
	t.Helper()
	ctx := context.Background()
	kv, _ := h.b.KV(ctx, events.BucketVMs)
	r := events.VMRecord{Namespace: d.VM.Metadata.Namespace, Name: d.VM.Metadata.Name, UID: "u-" + d.VM.Metadata.Name,
		Labels: d.VM.Metadata.Labels, Spec: d.VM.Spec, Size: events.VMSize{CPUs: 2, MemoryMiB: 4096},
		Status: events.VirtualMachineStatus{Phase: events.VMPhaseCreating}}
	if ready {
		r.Status.Phase, r.Status.PowerState, r.Status.Host, r.Status.IPs = events.VMPhaseReady, "PoweredOn", host, []string{"10.0.0.9"}
	}
	b, _ := json.Marshal(r)
	if _, err := kv.Put(ctx, events.VMRecordKey(r.Namespace, r.Name), b); err != nil {
		t.Fatal(err)
	}
}

func (h *harness) deleteVMRecord(t *testing.T, ns, name string) {
	t.Helper()
	kv, _ := h.b.KV(context.Background(), events.BucketVMs)
	if err := kv.Delete(context.Background(), events.VMRecordKey(ns, name)); err != nil {
		t.Fatal(err)
	}
}

func declared(t *testing.T, h *harness) *events.VMDeclared {
	t.Helper()
	var d events.VMDeclared
	if err := json.Unmarshal(h.await(t, events.TypeVMDeclared).Data(), &d); err != nil {
		t.Fatal(err)
	}
	return &d
}

// TestWorkerNodesFollowTheWorkerCount: spec.workers.replicas worker VMs are
// declared (class, image, network, labels, user data naming the node), the
// node.list query and the record say which run, a re-apply with fewer
// workers deletes the VM past the count and an unchanged one declares
// nothing, and deleting the guest cluster deletes its worker VMs and waits
// for them.
func TestWorkerNodesFollowTheWorkerCount(t *testing.T) {
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 2, ClassName: "small", ImageName: "vmos"}
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	w0, w1 := declared(t, h), declared(t, h)
	if w0.VM.Metadata.Name > w1.VM.Metadata.Name {
		w0, w1 = w1, w0
	}
	if w0.VM.Metadata.Name != "gc1-worker-0" || w1.VM.Metadata.Name != "gc1-worker-1" || w0.VM.Metadata.Namespace != "team-a" ||
		w0.VM.Spec.ClassName != "small" || w0.VM.Spec.ImageName != "vmos" || w0.VM.Spec.Networks[0] != events.DefaultNetwork ||
		w0.VM.Metadata.Labels[events.LabelGuestCluster] != "gc1" || !strings.Contains(w0.VM.Spec.UserData, "team-a/gc1 worker gc1-worker-0") {
		t.Fatalf("declared %+v and %+v", w0.VM, w1.VM)
	}
	h.await(t, events.TypeGuestClusterReady)

	// One VM runs, the other is still being made.
	h.putWorkerVM(t, w0, "esx-1", true)
	h.putWorkerVM(t, w1, "", false)
	r := h.ask(t, "team-a", "gc1", events.GuestOpNodeList, struct{}{})
	if r.Error != "" || len(r.Nodes) != 2 || !r.Nodes[0].Ready || r.Nodes[0].Host != "esx-1" || r.Nodes[0].CPUs != 2 ||
		r.Nodes[0].MemoryBytes != 4<<30 || r.Nodes[1].Ready || !strings.Contains(r.Nodes[1].Message, "Creating") {
		t.Fatalf("node.list = %+v", r)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.ReadyWorkers != 1 || len(rec.Workers) != 2 {
		t.Errorf("record workers %d ready of %+v, want 1 of 2", rec.ReadyWorkers, rec.Workers)
	}
	h.putWorkerVM(t, w1, "esx-2", true)
	if r := h.ask(t, "team-a", "gc1", events.GuestOpNodeList, struct{}{}); len(r.Nodes) != 2 || !r.Nodes[1].Ready {
		t.Fatalf("node.list = %+v", r)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.ReadyWorkers != 2 {
		t.Errorf("record: %d ready workers, want 2", rec.ReadyWorkers)
	}

	// An unchanged re-apply declares each worker again as its VM has it
	// (the native VM controller changes nothing) and deletes nothing; one
	// worker fewer deletes the VM past the count.
	h.requestReady(t, req)
	if asked := h.vmsSettled(t, "marker-1"); len(asked) != 0 {
		t.Fatalf("an unchanged re-apply asked for deletions %v", asked)
	}
	for _, d := range h.declarationsSince(t, "marker-2") {
		if w := map[string]*events.VMDeclared{w0.VM.Metadata.Name: w0, w1.VM.Metadata.Name: w1}[d.VM.Metadata.Name]; w == nil ||
			!reflect.DeepEqual(w.VM, d.VM) {
			t.Fatalf("an unchanged re-apply declared %+v, want only the declarations as before", d.VM)
		}
	}
	req.GuestCluster.Spec.Workers.Replicas = 1
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	ev := h.await(t, events.TypeVMDeleteRequested)
	var del events.VMDeleteRequested
	_ = json.Unmarshal(ev.Data(), &del)
	if del.Name != "gc1-worker-1" {
		t.Fatalf("scale down asked to delete %+v, want gc1-worker-1", del)
	}
	h.await(t, events.TypeGuestClusterReady)
	h.deleteVMRecord(t, "team-a", "gc1-worker-1")
	if r := h.ask(t, "team-a", "gc1", events.GuestOpNodeList, struct{}{}); len(r.Nodes) != 1 || r.Nodes[0].Name != "gc1-worker-0" {
		t.Fatalf("node.list after the scale down = %+v", r)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.ReadyWorkers != 1 || len(rec.Workers) != 1 {
		t.Errorf("record after the scale down: %d ready of %+v", rec.ReadyWorkers, rec.Workers)
	}

	// Delete: the worker VM is asked for deletion, and the guest cluster
	// is gone only once its record is.
	h.publish(t, events.TypeGuestClusterDeleteRequested, "team-a/gc1", &events.GuestClusterDeleteRequested{
		GuestClusterRef: events.GuestClusterRef{Namespace: "team-a", Name: "gc1"}})
	ev = h.await(t, events.TypeVMDeleteRequested, events.TypeGuestClusterDeleted)
	_ = json.Unmarshal(ev.Data(), &del)
	if ev.Type() != events.TypeVMDeleteRequested || del.Name != "gc1-worker-0" {
		t.Fatalf("delete published %s %+v first, want vm.delete.requested of gc1-worker-0", ev.Type(), del)
	}
	h.deleteVMRecord(t, "team-a", "gc1-worker-0")
	h.await(t, events.TypeGuestClusterDeleted)
}

// deleteWorkerVM does what the native VM controller does once a worker
// VM is destroyed (`podvisor delete vm`): its record goes, then vm.deleted.
func (h *harness) deleteWorkerVM(t *testing.T, ns, name string) {
	t.Helper()
	h.deleteVMRecord(t, ns, name)
	h.vmDeleted(t, ns, name)
}

// vmDeleted publishes vm.deleted of ns/name as the native VM controller.
func (h *harness) vmDeleted(t *testing.T, ns, name string) {
	t.Helper()
	ev, err := bus.NewEvent(events.OwnerSource(events.TypeVMDeleted), events.TypeVMDeleted, ns+"/"+name,
		&events.VMDeleted{VMRef: events.VMRef{Namespace: ns, Name: name, UID: "u-" + name}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.b.Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
}

// vmDeletedHandled waits until the controller has settled every vm.deleted
// published so far.
func (h *harness) vmDeletedHandled(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := h.b.JetStream().Consumer(ctx, events.StreamVMs, Name+"-"+events.StreamVMs)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm.deleted not handled within 20s: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDeletedWorkerIsMadeAgain: a worker VM deleted while its guest cluster
// runs is declared again under its name, with its spec (on vm.deleted, and
// on the resync when its record went without one), and the record counts it
// as not ready until its new VM runs; one deleted past the count (a
// scale-down) or while the guest cluster is being deleted stays gone.
func TestDeletedWorkerIsMadeAgain(t *testing.T) {
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 3, ClassName: "small", ImageName: "vmos"}
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	ws := []*events.VMDeclared{declared(t, h), declared(t, h), declared(t, h)}
	slices.SortFunc(ws, func(a, b *events.VMDeclared) int { return strings.Compare(a.VM.Metadata.Name, b.VM.Metadata.Name) })
	h.await(t, events.TypeGuestClusterReady)
	for _, w := range ws {
		h.putWorkerVM(t, w, "esx-1", true)
	}
	if r := h.ask(t, "team-a", "gc1", events.GuestOpNodeList, struct{}{}); len(r.Nodes) != 3 || !r.Nodes[0].Ready || !r.Nodes[1].Ready || !r.Nodes[2].Ready {
		t.Fatalf("node.list = %+v", r)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.ReadyWorkers != 3 {
		t.Fatalf("record: %d ready workers, want 3", rec.ReadyWorkers)
	}

	// `podvisor delete vm gc1-worker-0`: declared again, and the record
	// says two workers of three are ready meanwhile.
	h.deleteWorkerVM(t, "team-a", "gc1-worker-0")
	again := declared(t, h)
	if again.VM.Metadata.Name != "gc1-worker-0" || again.VM.Metadata.Namespace != "team-a" || again.VM.Spec.ClassName != "small" ||
		again.VM.Spec.ImageName != "vmos" || again.VM.Metadata.Labels[events.LabelGuestClusterRole] != workerRole {
		t.Fatalf("declared again %+v, want gc1-worker-0 as before", again.VM)
	}
	rec := h.waitRecord(t, "team-a", "gc1", func(r events.GuestClusterRecord) bool { return r.ReadyWorkers == 2 })
	if len(rec.Workers) != 3 || rec.Workers[0].Ready || !strings.Contains(rec.Workers[0].Message, "not made yet") || !rec.Workers[1].Ready {
		t.Errorf("record while gc1-worker-0 is made again: %+v", rec.Workers)
	}
	h.putWorkerVM(t, again, "esx-1", true)
	if r := h.ask(t, "team-a", "gc1", events.GuestOpNodeList, struct{}{}); len(r.Nodes) != 3 || !r.Nodes[0].Ready {
		t.Fatalf("node.list once gc1-worker-0 runs again = %+v", r)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.ReadyWorkers != 3 {
		t.Errorf("record once gc1-worker-0 runs again: %d ready workers, want 3", rec.ReadyWorkers)
	}

	// A record removed without vm.deleted: the resync finds it missing.
	h.deleteVMRecord(t, "team-a", "gc1-worker-1")
	if err := h.svc.resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if again := declared(t, h); again.VM.Metadata.Name != "gc1-worker-1" {
		t.Fatalf("resync declared %s, want gc1-worker-1", again.VM.Metadata.Name)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.ReadyWorkers != 2 || len(rec.Workers) != 3 || rec.Workers[1].Ready {
		t.Errorf("record after the resync: %d ready of %+v, want 2 of 3", rec.ReadyWorkers, rec.Workers)
	}
	h.putWorkerVM(t, ws[1], "esx-1", true)

	// A scale-down: the worker past the count stays gone.
	req.GuestCluster.Spec.Workers.Replicas = 2
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	var del events.VMDeleteRequested
	if err := json.Unmarshal(h.await(t, events.TypeVMDeleteRequested).Data(), &del); err != nil || del.Name != "gc1-worker-2" {
		t.Fatalf("scale down asked to delete %+v (%v), want gc1-worker-2", del, err)
	}
	h.await(t, events.TypeGuestClusterReady)
	// The scale-down's request declares the workers it keeps again (as
	// their VMs have them), never the one past the count.
	if names := h.declaredSince(t, "marker-scale"); slices.Contains(names, "gc1-worker-2") {
		t.Fatalf("the scale-down declared %v, want gc1-worker-2 left out", names)
	}
	h.deleteWorkerVM(t, "team-a", "gc1-worker-2")
	h.vmDeletedHandled(t)

	// Deleting the guest cluster: a worker VM deleted meanwhile is not
	// made again.
	h.publish(t, events.TypeGuestClusterDeleteRequested, "team-a/gc1", &events.GuestClusterDeleteRequested{
		GuestClusterRef: events.GuestClusterRef{Namespace: "team-a", Name: "gc1"}})
	h.await(t, events.TypeVMDeleteRequested)
	h.await(t, events.TypeVMDeleteRequested)
	h.deleteWorkerVM(t, "team-a", "gc1-worker-0")
	h.vmDeletedHandled(t)
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseDeleting {
		t.Fatalf("phase %s while gc1-worker-1 is still there, want Deleting", rec.Phase)
	}
	h.deleteWorkerVM(t, "team-a", "gc1-worker-1")
	h.await(t, events.TypeGuestClusterDeleted)
	h.vmDeletedHandled(t)
	// The stream is read in order: once this vm.deleted is seen, so is any
	// declaration the controller published before it settled the others.
	h.vmDeleted(t, "team-a", "marker")
	for {
		var d events.VMDeleted
		if err := json.Unmarshal(h.await(t, events.TypeVMDeleted).Data(), &d); err != nil {
			t.Fatal(err)
		}
		if d.Name == "marker" {
			break
		}
	}
	for _, ev := range h.skipped {
		if ev.Type() == events.TypeVMDeclared {
			var d events.VMDeclared
			_ = json.Unmarshal(ev.Data(), &d)
			t.Errorf("declared %s after the scale-down or while its guest cluster was being deleted", d.VM.Metadata.Name)
		}
	}
}

// vmsSettled waits until every event of the VMS stream published so far
// has been seen: a vm.deleted of a VM no one has, published now, comes
// after them (the stream is read in order). It returns the
// vm.delete.requested events seen meanwhile, by VM name, counting each
// copy, and drops them and the marker from what await keeps.
func (h *harness) vmsSettled(t *testing.T, marker string) map[string]int {
	t.Helper()
	h.vmDeleted(t, "team-a", marker)
	for {
		var d events.VMDeleted
		if err := json.Unmarshal(h.await(t, events.TypeVMDeleted).Data(), &d); err != nil {
			t.Fatal(err)
		}
		if d.Name == marker {
			break
		}
	}
	asked := map[string]int{}
	h.skipped = slices.DeleteFunc(h.skipped, func(ev event.Event) bool {
		if ev.Type() != events.TypeVMDeleteRequested {
			return false
		}
		var d events.VMDeleteRequested
		_ = json.Unmarshal(ev.Data(), &d)
		asked[d.Namespace+"/"+d.Name]++
		return true
	})
	return asked
}

// TestReplacementNeverDeletesAWorker: replaceWorkers acts on the spec it
// read, which a newer one (a scale-up on another replica) may have
// outgrown: a worker VM past its count is left to the request's handler.
func TestReplacementNeverDeletesAWorker(t *testing.T) {
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "small", ImageName: "vmos"}
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	w0 := declared(t, h)
	h.await(t, events.TypeGuestClusterReady)
	h.putWorkerVM(t, w0, "esx-1", true)
	// gc1-worker-1, as a scale-up to two handled elsewhere declared it
	// while this replica still reads one worker.
	spec := req.GuestCluster.Spec
	spec.Workers.Replicas = 2
	h.putWorkerVM(t, &events.VMDeclared{VM: workerVM("team-a", "gc1", spec, 1)}, "esx-1", true)

	h.deleteWorkerVM(t, "team-a", "gc1-worker-0")
	if again := declared(t, h); again.VM.Metadata.Name != "gc1-worker-0" {
		t.Fatalf("declared again %s, want gc1-worker-0", again.VM.Metadata.Name)
	}
	if err := h.svc.resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	h.vmDeletedHandled(t)
	if asked := h.vmsSettled(t, "marker"); len(asked) != 0 {
		t.Errorf("replacement asked for deletions %v, want none", asked)
	}
}

// TestOrphanVMsAreDeleted: a VM labelled with a guest cluster whose record
// is gone (declared just before the delete, made after deleteWorkers found
// none) or Deleting is asked for deletion by the resync, once whatever
// the number of passes; the VMs of a running guest cluster and VMs of no
// guest cluster are left alone.
func TestOrphanVMsAreDeleted(t *testing.T) {
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "small", ImageName: "vmos"}
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	h.await(t, events.TypeGuestClusterReady)
	spec := req.GuestCluster.Spec
	h.putWorkerVM(t, declared(t, h), "esx-1", true)

	// gc1 is deleted while no worker VM is recorded; its worker made
	// again meanwhile is made once the record is gone.
	h.deleteVMRecord(t, "team-a", "gc1-worker-0")
	h.publish(t, events.TypeGuestClusterDeleteRequested, "team-a/gc1", &events.GuestClusterDeleteRequested{
		GuestClusterRef: events.GuestClusterRef{Namespace: "team-a", Name: "gc1"}})
	h.await(t, events.TypeGuestClusterDeleted)
	h.putWorkerVM(t, &events.VMDeclared{VM: workerVM("team-a", "gc1", spec, 0)}, "esx-1", true)

	// gc2 runs; gc3 is being deleted (its delete's handler is elsewhere).
	req2 := guestCluster()
	req2.GuestCluster.Metadata.Name = "gc2"
	req2.GuestCluster.Spec = spec
	h.publish(t, events.TypeGuestClusterRequested, req2.ObjectKey(), req2)
	h.await(t, events.TypeGuestClusterReady)
	h.putWorkerVM(t, declared(t, h), "esx-1", true)
	kv, err := h.b.KV(t.Context(), events.BucketGuestClusters)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	gc3, _ := json.Marshal(events.GuestClusterRecord{Namespace: "team-a", Name: "gc3", Spec: spec,
		Phase: events.GuestClusterPhaseDeleting, DeletionRequestedAt: &now})
	if _, err := kv.Put(t.Context(), events.GuestClusterRecordKey("team-a", "gc3"), gc3); err != nil {
		t.Fatal(err)
	}
	h.putWorkerVM(t, &events.VMDeclared{VM: workerVM("team-a", "gc3", spec, 0)}, "esx-1", true)
	plain := workerVM("team-a", "plain", spec, 0)
	plain.Metadata.Labels = nil
	h.putWorkerVM(t, &events.VMDeclared{VM: plain}, "esx-1", true)

	for range 2 {
		if err := h.svc.resync(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	asked := h.vmsSettled(t, "marker")
	want := map[string]int{"team-a/gc1-worker-0": 1, "team-a/gc3-worker-0": 1}
	if !maps.Equal(asked, want) {
		t.Errorf("asked for deletions %v, want %v (one request each)", asked, want)
	}
}

// vmRejected publishes vm.rejected of worker VM ns/name as the native VM
// controller does when it refuses its declaration.
func (h *harness) vmRejected(t *testing.T, ns, name, reason, field, message string) {
	t.Helper()
	ev, err := bus.NewEvent(events.OwnerSource(events.TypeVMRejected), events.TypeVMRejected, ns+"/"+name,
		&events.VMRejected{Kind: events.KindVirtualMachine, Namespace: ns, Name: name, Reason: reason, Field: field, Message: message})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.b.Publish(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
}

// putVMImage writes the native VM controller's record of a declared
// VirtualMachineImage.
func (h *harness) putVMImage(t *testing.T, name string) {
	t.Helper()
	kv, err := h.b.KV(t.Context(), events.BucketVMImages)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(events.VMImageRecord{Image: events.VirtualMachineImage{APIVersion: events.APIVersion,
		Kind: events.KindVirtualMachineImage, Metadata: events.Meta{Name: name}}, Ready: true, UpdatedAt: time.Now().UTC()})
	if _, err := kv.Put(t.Context(), name, b); err != nil {
		t.Fatal(err)
	}
}

// declaredNamed waits for a declaration of VM name, passing over those
// of other VMs.
func declaredNamed(t *testing.T, h *harness, name string) *events.VMDeclared {
	t.Helper()
	for {
		if d := declared(t, h); d.VM.Metadata.Name == name {
			return d
		}
	}
}

// declarationsSince is declaredSince with the declarations, in the order
// they were published.
func (h *harness) declarationsSince(t *testing.T, marker string) []*events.VMDeclared {
	t.Helper()
	h.vmsSettled(t, marker)
	var out []*events.VMDeclared
	h.skipped = slices.DeleteFunc(h.skipped, func(ev event.Event) bool {
		if ev.Type() != events.TypeVMDeclared {
			return false
		}
		var d events.VMDeclared
		_ = json.Unmarshal(ev.Data(), &d)
		out = append(out, &d)
		return true
	})
	return out
}

// declaredSince reports the names of the VMs declared since the last
// vmsSettled, once every event published so far has been seen, and drops
// those declarations from what await keeps.
func (h *harness) declaredSince(t *testing.T, marker string) []string {
	t.Helper()
	h.vmsSettled(t, marker)
	var names []string
	h.skipped = slices.DeleteFunc(h.skipped, func(ev event.Event) bool {
		if ev.Type() != events.TypeVMDeclared {
			return false
		}
		var d events.VMDeclared
		_ = json.Unmarshal(ev.Data(), &d)
		names = append(names, d.VM.Metadata.Name)
		return true
	})
	return names
}

// TestRefusedWorkerWaitsForAChange: a worker VM whose declaration the
// native VM controller refuses (vm.rejected: its image does not exist) is
// recorded Rejected, with the refusal's reason, field and message, on its
// node and in the guest cluster's condition WorkersAccepted=False; the
// resync does not declare it again while nothing that could make it
// succeed changed; it is declared again once the image it lacked is
// declared, and on a new request of the guest cluster; once its VM is
// made, its node says so and the condition is True again.
func TestRefusedWorkerWaitsForAChange(t *testing.T) {
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 2, ClassName: "small", ImageName: "vmos"}
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	ws := []*events.VMDeclared{declared(t, h), declared(t, h)}
	slices.SortFunc(ws, func(a, b *events.VMDeclared) int { return strings.Compare(a.VM.Metadata.Name, b.VM.Metadata.Name) })
	h.await(t, events.TypeGuestClusterReady)
	h.putWorkerVM(t, ws[0], "esx-1", true)

	const noImage = `spec.imageName: VirtualMachineImage "vmos" not found; declare it first`
	h.vmRejected(t, "team-a", "gc1-worker-1", "NotFound", "spec.imageName", noImage)
	rec := h.waitRecord(t, "team-a", "gc1", func(r events.GuestClusterRecord) bool {
		return len(r.Workers) == 2 && strings.HasPrefix(r.Workers[1].Message, "Rejected")
	})
	if w := rec.Workers[1]; w.Ready || !strings.Contains(w.Message, "NotFound") || !strings.Contains(w.Message, "spec.imageName") ||
		!strings.Contains(w.Message, noImage) || !rec.Workers[0].Ready || rec.ReadyWorkers != 1 {
		t.Errorf("workers after the refusal: %+v (%d ready), want gc1-worker-1 Rejected naming NotFound, spec.imageName and the message", rec.Workers, rec.ReadyWorkers)
	}
	cond, ok := conditionOf(rec, conditionWorkersAccepted)
	if !ok || cond.Status != events.ConditionFalse || cond.Reason != "NotFound" ||
		!strings.Contains(cond.Message, "gc1-worker-1") || !strings.Contains(cond.Message, "spec.imageName") {
		t.Errorf("condition %s = %+v (%v), want False, NotFound, naming gc1-worker-1 and spec.imageName", conditionWorkersAccepted, cond, ok)
	}

	// Nothing changed: the resync does not declare it again, however often.
	for range 3 {
		if err := h.svc.resync(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if again := h.declaredSince(t, "marker-1"); len(again) != 0 {
		t.Fatalf("the resync declared %v again, want nothing while the image is missing", again)
	}

	// The image is declared: the next resync declares the worker again;
	// refused again (now its class is missing), it waits again.
	h.putVMImage(t, "vmos")
	if err := h.svc.resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if again := declared(t, h); again.VM.Metadata.Name != "gc1-worker-1" || again.VM.Spec.ImageName != "vmos" {
		t.Fatalf("once the image exists the resync declared %+v, want gc1-worker-1", again.VM)
	}
	const noClass = `spec.className: VirtualMachineClass "small" not found; declare it first`
	h.vmRejected(t, "team-a", "gc1-worker-1", "NotFound", "spec.className", noClass)
	h.waitRecord(t, "team-a", "gc1", func(r events.GuestClusterRecord) bool {
		return len(r.Workers) == 2 && strings.Contains(r.Workers[1].Message, "spec.className")
	})
	if err := h.svc.resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	if again := h.declaredSince(t, "marker-2"); len(again) != 0 {
		t.Fatalf("the resync declared %v again, want nothing while the class is missing", again)
	}

	// A new request (the same spec applied again) is a new try.
	h.requestReady(t, req)
	again := declaredNamed(t, h, "gc1-worker-1")
	h.putWorkerVM(t, again, "esx-1", true)
	if err := h.svc.resync(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec = h.record(t, "team-a", "gc1")
	if rec.ReadyWorkers != 2 || len(rec.Workers) != 2 || strings.HasPrefix(rec.Workers[1].Message, "Rejected") {
		t.Errorf("workers once gc1-worker-1 runs: %+v (%d ready), want both ready", rec.Workers, rec.ReadyWorkers)
	}
	if cond, ok := conditionOf(rec, conditionWorkersAccepted); !ok || cond.Status != events.ConditionTrue {
		t.Errorf("condition %s once gc1-worker-1 runs = %+v (%v), want True", conditionWorkersAccepted, cond, ok)
	}
}

// consumerInfo is the guest cluster controller's consumer of stream.
func (h *harness) consumerInfo(t *testing.T, stream string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := h.b.JetStream().Consumer(t.Context(), stream, Name+"-"+stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// waitConsumer waits until the controller's consumer of stream satisfies ok.
func (h *harness) waitConsumer(t *testing.T, stream, what string, ok func(*jetstream.ConsumerInfo) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		// The controller makes its consumer as it starts: a test that
		// begins with a request can look before it is there.
		c, err := h.b.JetStream().Consumer(t.Context(), stream, Name+"-"+stream)
		if errors.Is(err, jetstream.ErrConsumerNotFound) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if ok(info) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s: %s not within 20s: %d pending, %d unacknowledged, ack floor %d", info.Name, what,
				info.NumPending, info.NumAckPending, info.AckFloor.Stream)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// publishSeq publishes a request as the CLI does and returns its stream
// sequence.
func (h *harness) publishSeq(t *testing.T, ceType, subject string, p events.Payload) uint64 {
	t.Helper()
	ev, err := bus.NewEvent("podvisor/cli", ceType, subject, p)
	if err != nil {
		t.Fatal(err)
	}
	seq, err := h.b.PublishSeq(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// TestAnOlderRequestDoesNothing: a request handled once a newer request of
// the same guest cluster was stored (here its delivery retried after its
// first failed; a replica that took it late is the same case) neither
// takes the record back to its spec nor declares or deletes anything from
// it: it is acked, and the newer spec stands.
func TestAnOlderRequestDoesNothing(t *testing.T) {
	h, _ := oneWorkerRunning(t)

	// Two workers: the request's first delivery declares gc1-worker-1,
	// then its control plane's Ensure is held, and fails once let go.
	two := guestCluster()
	two.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 2, ClassName: "small", ImageName: "vmos"}
	release := h.requestHeldToFail(t, two)
	w1 := declaredNamed(t, h, "gc1-worker-1")
	h.putWorkerVM(t, w1, "esx-1", true)

	// Three workers, requested meanwhile: delivered, behind the first.
	// gc1-worker-2 exists already (as another declaration made it).
	three := guestCluster()
	three.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 3, ClassName: "small", ImageName: "vmos"}
	seq3 := h.publishSeq(t, events.TypeGuestClusterRequested, three.ObjectKey(), three)
	made := three.GuestCluster
	made.Normalize()
	h.putWorkerVM(t, &events.VMDeclared{VM: workerVM("team-a", "gc1", made.Spec, 2)}, "esx-1", true)
	h.waitConsumer(t, events.StreamGuestClusters, "both requests delivered", func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 2
	})

	// Let go: the first fails (retried later), the newer is handled, then
	// the first comes again, older than the spec the record holds.
	release()
	h.await(t, events.TypeGuestClusterReady)
	h.waitConsumer(t, events.StreamGuestClusters, "every request settled", func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= seq3
	})
	if rec := h.record(t, "team-a", "gc1"); rec.Spec.Workers.Replicas != 3 || rec.Phase != events.GuestClusterPhaseReady {
		t.Errorf("record after the older request came again: %d workers, %s; want the newer spec's 3, Ready", rec.Spec.Workers.Replicas, rec.Phase)
	}
	if asked := h.vmsSettled(t, "marker"); len(asked) != 0 {
		t.Errorf("asked for deletions %v, want none (the newer spec wants three workers)", asked)
	}
	// The newer request declares each of its three workers once; the
	// older one, come again, declares nothing.
	again := h.declaredSince(t, "marker-2")
	slices.Sort(again)
	if want := []string{"gc1-worker-0", "gc1-worker-1", "gc1-worker-2"}; !slices.Equal(again, want) {
		t.Errorf("declared %v once the first request was let go, want %v (the newer request's, once each)", again, want)
	}
}

// workerClass is the class of the declaration of gc1-worker-0 among ds
// published last, "" when none is.
func workerClass(ds []*events.VMDeclared) string {
	class := ""
	for _, d := range ds {
		if d.VM.Metadata.Name == "gc1-worker-0" {
			class = d.VM.Spec.ClassName
		}
	}
	return class
}

// TestARequestDeclaresWhatItsVMMayLack: a request's pass declares every
// worker of its spec even when the worker's VM record has that spec
// already: the record lags behind declarations on the bus, and an older
// spec's declared meanwhile (here: the request before it, which the
// native VM controller has not applied yet) must not be the last applied.
func TestARequestDeclaresWhatItsVMMayLack(t *testing.T) {
	h, small := oneWorkerRunning(t)

	large := guestCluster()
	large.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "large", ImageName: "vmos"}
	h.requestReady(t, large)
	if d := declaredNamed(t, h, "gc1-worker-0"); d.VM.Spec.ClassName != "large" {
		t.Fatalf("the request for class large declared %+v", d.VM)
	}

	// Applied again before the native VM controller took the declaration
	// above: its VM's record still has class small.
	h.requestReady(t, small)
	if got := workerClass(h.declarationsSince(t, "marker")); got != "small" {
		t.Errorf("last declaration of gc1-worker-0 has class %q, want small (the newest request's)", got)
	}
}

// onPassEmitted has f called, once, after the first declareWorkers pass
// that published (before it reads the record again).
func (h *harness) onPassEmitted(t *testing.T, f func(key string)) {
	t.Helper()
	var once sync.Once
	hook := func(key string) { once.Do(func() { f(key) }) }
	h.svc.passEmitted.Store(&hook)
	t.Cleanup(func() { h.svc.passEmitted.Store(nil) })
}

// storeAsReplica writes the guest cluster's record as another replica's
// request handler stores a newer request (its compare-and-set, done here
// by hand at the moment chosen), with change applied to it.
func (h *harness) storeAsReplica(t *testing.T, key string, spec events.GuestClusterSpec, change func(r *clusterRecord)) {
	t.Helper()
	if _, err := h.svc.clusters.Mutate(context.Background(), key, func(r *clusterRecord) error {
		r.Spec = spec
		r.Generation, r.GenerationAt = r.Generation+1, time.Now().UTC()
		r.RefusedWorkers = nil
		change(r)
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// TestAFollowDeclaresTheNewerSpecLast: replica A's request (class large)
// declares; before its declarations are applied, replica B stores a newer
// request (class small, what the worker's VM record still has) and, going
// by that record, declares nothing. A reads the record again and declares
// the newer spec after its own, although the VM record has it: the last
// declaration is the newest spec's.
func TestAFollowDeclaresTheNewerSpecLast(t *testing.T) {
	h, _ := oneWorkerRunning(t)
	stored := h.record(t, "team-a", "gc1").Spec

	key := events.GuestClusterRecordKey("team-a", "gc1")
	h.onPassEmitted(t, func(string) {
		h.storeAsReplica(t, key, stored, func(*clusterRecord) {})
	})
	large := guestCluster()
	large.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "large", ImageName: "vmos"}
	seq := h.publishSeq(t, events.TypeGuestClusterRequested, large.ObjectKey(), large)
	h.waitConsumer(t, events.StreamGuestClusters, "the request settled", func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= seq
	})
	ds := h.declarationsSince(t, "marker")
	var classes []string
	for _, d := range ds {
		classes = append(classes, d.VM.Metadata.Name+":"+d.VM.Spec.ClassName)
	}
	if want := []string{"gc1-worker-0:large", "gc1-worker-0:small"}; !slices.Equal(classes, want) {
		t.Errorf("declared %v, want %v (the newer spec's after the one it superseded)", classes, want)
	}
}

// TestAFollowLeavesASpecNotAdmitted: replica A's request declares its
// worker; meanwhile replica B stores a newer request of another version
// whose admission is not through (its check under way, refused, or of a
// version this podvisor does not run). A follows the record but declares
// nothing from that spec: nothing is built before its version is found
// compatible, and B's handler declares it once it is.
func TestAFollowLeavesASpecNotAdmitted(t *testing.T) {
	tests := []struct {
		name    string
		version string
		change  func(r *clusterRecord)
	}{
		{name: "check under way", version: "v1.37.3", change: func(r *clusterRecord) {
			r.SetCondition(events.GuestClusterConditionCompatible, events.ConditionUnknown, "Checking", "", time.Now().UTC())
		}},
		{name: "incompatible", version: "v1.37.3", change: func(r *clusterRecord) {
			r.SetCondition(events.GuestClusterConditionCompatible, events.ConditionFalse, ReasonIncompatible, "unmet", time.Now().UTC())
			r.Phase, r.Reason = events.GuestClusterPhaseFailed, ReasonIncompatible
		}},
		{name: "compatible but not run here", version: "v1.37.3", change: func(r *clusterRecord) {
			r.SetCondition(events.GuestClusterConditionCompatible, events.ConditionTrue, "Compatible", "", time.Now().UTC())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t)
			first := guestCluster()
			first.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "small", ImageName: "vmos"}
			newer := first.GuestCluster
			newer.Spec.Version = tt.version
			newer.Spec.Workers = events.GuestClusterNodes{Replicas: 2, ClassName: "other", ImageName: "vmos"}
			newer.Normalize()
			h.onPassEmitted(t, func(key string) { h.storeAsReplica(t, key, newer.Spec, tt.change) })
			seq := h.publishSeq(t, events.TypeGuestClusterRequested, first.ObjectKey(), first)
			h.waitConsumer(t, events.StreamGuestClusters, "the request settled", func(i *jetstream.ConsumerInfo) bool {
				return i.NumPending == 0 && i.NumAckPending == 0 && i.AckFloor.Stream >= seq
			})
			var got []string
			for _, d := range h.declarationsSince(t, "marker") {
				got = append(got, d.VM.Metadata.Name+":"+d.VM.Spec.ClassName)
			}
			if want := []string{"gc1-worker-0:small"}; !slices.Equal(got, want) {
				t.Errorf("declared %v, want %v (nothing of the spec not admitted)", got, want)
			}
		})
	}
}

// TestRecordNodesLeavesANewerRecord: a view of the worker nodes made from
// one record is not written onto a newer one (another request stored
// meanwhile): its nodes, and a refusal found against it, are of a spec the
// record no longer holds.
func TestRecordNodesLeavesANewerRecord(t *testing.T) {
	h, _ := oneWorkerRunning(t)
	ctx := t.Context()
	key := events.GuestClusterRecordKey("team-a", "gc1")
	old, _, err := h.svc.clusters.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := h.svc.workerNodes(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	newer := old.Spec
	newer.Workers.Replicas = 2
	h.storeAsReplica(t, key, newer, func(r *clusterRecord) { r.Workers, r.ReadyWorkers = nil, 0 })
	if _, err := h.svc.recordNodes(ctx, key, v, nil, &namedRefusal{vm: "gc1-worker-0",
		workerRefusal: workerRefusal{Reason: "Invalid", Message: "refused"}}); err != nil {
		t.Fatal(err)
	}
	cur, _, err := h.svc.clusters.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.Workers) != 0 || cur.ReadyWorkers != 0 || len(cur.RefusedWorkers) != 0 {
		t.Errorf("newer record got workers %+v (%d ready), refusals %v from the older view; want none", cur.Workers, cur.ReadyWorkers, cur.RefusedWorkers)
	}
}

// oneWorkerRunning starts the service and has a guest cluster of one small
// worker made Ready, its worker VM running on esx-1; it returns the harness
// and the request.
func oneWorkerRunning(t *testing.T) (*harness, *events.GuestClusterRequested) {
	t.Helper()
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Workers = events.GuestClusterNodes{Replicas: 1, ClassName: "small", ImageName: "vmos"}
	h.requestReady(t, req)
	h.putWorkerVM(t, declared(t, h), "esx-1", true)
	return h, req
}
