package scheduler

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// The sweep's view of a pod record reads the same fields as the record
// itself: a tag renamed on one side and not the other would make every
// pod look gone (no uid) or never placed (no phase) to the sweep.
func TestPodViewReadsThePodRecordsFields(t *testing.T) {
	rec := events.PodRecord{
		UID: "u1", Namespace: "ns", Name: "web", Phase: events.PodPhaseRunning, Reason: "Unschedulable",
		Host: "host-3", DeletionRequestedAt: time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC),
	}
	v := decodeAs[podView](t, &rec)
	want := podView{UID: rec.UID, Namespace: rec.Namespace, Name: rec.Name, Phase: rec.Phase, Reason: rec.Reason,
		Host: rec.Host, DeletionRequestedAt: rec.DeletionRequestedAt}
	if v != want {
		t.Errorf("view of the record = %+v, want %+v", v, want)
	}
	if v.key() != rec.Key() {
		t.Errorf("view key %q, record key %q", v.key(), rec.Key())
	}
}

// The pending rescan's view of a VM record reads the same fields as the
// record itself, for the same reason: a VM whose host or Scheduled
// condition the view missed would be placed a second time.
func TestVMViewReadsTheVMRecordsFields(t *testing.T) {
	rec := events.VMRecord{
		UID: "u1", Namespace: "ns", Name: "db", Generation: 3,
		DeletionRequestedAt: time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC),
		Status:              events.VirtualMachineStatus{Phase: events.VMPhasePending, Host: "host-3"},
	}
	rec.SetCondition(events.VMConditionScheduled, events.ConditionFalse, "Unschedulable", "0/3 hosts", time.Now())
	v := decodeAs[vmView](t, &rec)
	if v.UID != rec.UID || v.Namespace != rec.Namespace || v.Name != rec.Name || v.Generation != rec.Generation ||
		!v.DeletionRequestedAt.Equal(rec.DeletionRequestedAt) || v.Status.Phase != rec.Status.Phase || v.Status.Host != rec.Status.Host {
		t.Errorf("view of the record = %+v, want the record's %+v", v, rec)
	}
	if c, _ := rec.Condition(events.VMConditionScheduled); v.scheduledReason() != c.Reason {
		t.Errorf("view's Scheduled reason %q, record's %q", v.scheduledReason(), c.Reason)
	}
	if v.key() != rec.Key() {
		t.Errorf("view key %q, record key %q", v.key(), rec.Key())
	}
}

// decodeAs reads rec's JSON into a V, as a bucket scan decodes a record.
func decodeAs[V any](t *testing.T, rec any) V {
	t.Helper()
	var v V
	data, err := json.Marshal(rec)
	if err == nil {
		err = json.Unmarshal(data, &v)
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The rescan decodes every VM record on every pass: the view against the
// whole record, for a VM with cloud-init user data, disks and NICs.
func BenchmarkVMRecordDecode(b *testing.B) {
	rec := events.VMRecord{
		UID: "u1", Namespace: "ns", Name: "db", Generation: 2, Labels: map[string]string{"app": "db", "tier": "data"},
		Spec: events.VirtualMachineSpec{ClassName: "large", ImageName: "ubuntu-24", Networks: []string{"default", "backend"},
			Disks: []events.VMDisk{{Name: "data", Size: "100Gi"}, {Name: "logs", Size: "20Gi"}}, UserData: strings.Repeat("#cloud-config\n", 300)},
		Size:  events.VMSize{CPUs: 4, MemoryMiB: 8192},
		Image: events.VirtualMachineImageSpec{OCI: "registry.example/ubuntu:24.04", GuestID: "ubuntu64Guest"},
		Status: events.VirtualMachineStatus{Phase: events.VMPhaseReady, Host: "host-3", VM: "vm-42", IPs: []string{"10.0.0.7", "10.1.0.7"},
			NICs: []events.NetworkAttachment{{Network: "default", PortGroup: "pv-default", IP: "10.0.0.7", PrefixLength: 24}, {Network: "backend", PortGroup: "pv-backend", IP: "10.1.0.7", PrefixLength: 24}}},
	}
	rec.SetCondition(events.VMConditionScheduled, events.ConditionTrue, "Scheduled", "placed", time.Now())
	data, err := json.Marshal(&rec)
	if err != nil {
		b.Fatal(err)
	}
	decode := func(b *testing.B, into func() any) {
		b.ReportAllocs()
		for b.Loop() {
			if err := json.Unmarshal(data, into()); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("record", func(b *testing.B) { decode(b, func() any { return new(events.VMRecord) }) })
	b.Run("view", func(b *testing.B) { decode(b, func() any { return new(vmView) }) })
}
