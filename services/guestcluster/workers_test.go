package guestcluster

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
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

	// An unchanged re-apply declares nothing; one worker fewer deletes
	// the VM past the count.
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	if ev := h.await(t, events.TypeGuestClusterReady, events.TypeVMDeclared, events.TypeVMDeleteRequested); ev.Type() != events.TypeGuestClusterReady {
		t.Fatalf("an unchanged re-apply published %s", ev.Type())
	}
	req.GuestCluster.Spec.Workers.Replicas = 1
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	ev := h.await(t, events.TypeVMDeleteRequested, events.TypeVMDeclared)
	var del events.VMDeleteRequested
	_ = json.Unmarshal(ev.Data(), &del)
	if ev.Type() != events.TypeVMDeleteRequested || del.Name != "gc1-worker-1" {
		t.Fatalf("scale down published %s %+v, want vm.delete.requested of gc1-worker-1", ev.Type(), del)
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
