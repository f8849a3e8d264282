package guestcluster

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

func (h *harness) record(t *testing.T, ns, name string) events.GuestClusterRecord {
	t.Helper()
	ctx := context.Background()
	kv, _ := h.b.KV(ctx, events.BucketGuestClusters)
	e, err := kv.Get(ctx, events.GuestClusterRecordKey(ns, name))
	if err != nil {
		t.Fatal(err)
	}
	var rec events.GuestClusterRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// vcenterEvents are the messages of the compatibility events vCenter holds
// on the datacenter's cluster (what `govc events` lists).
func (h *harness) vcenterEvents(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	cluster := h.dc.Clusters()[0].Ref
	evs, err := event.NewManager(h.vs.Vim()).QueryEvents(ctx, types.EventFilterSpec{
		Entity:      &types.EventFilterSpecByEntity{Entity: cluster, Recursion: types.EventFilterSpecRecursionOptionSelf},
		EventTypeId: []string{"io.podvisor.guestcluster.compatibility"}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, e.GetEvent().FullFormattedMessage)
	}
	return out
}

func compatibility(t *testing.T, h *harness) events.GuestClusterCompatibility {
	t.Helper()
	ev := h.await(t, events.TypeGuestClusterCompatibility)
	var c events.GuestClusterCompatibility
	if err := json.Unmarshal(ev.Data(), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIncompatibleGuestClusterIsRefusedBeforeAnythingIsBuilt: a version
// whose requirements the vCenter does not meet (v1.38 needs a site
// information manager, which vcsim does not offer) is refused with each unmet requirement
// named: in the record's Compatible condition, in guestcluster.failed, in
// guestcluster.compatibility and in the vCenter event on the cluster; no
// control plane is started.
func TestIncompatibleGuestClusterIsRefusedBeforeAnythingIsBuilt(t *testing.T) {
	h := start(t)
	req := guestCluster()
	req.GuestCluster.Spec.Version = "v1.38.0"
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	c := compatibility(t, h)
	if c.Compatible || c.Trigger != events.CompatTriggerCreate || c.Version != "v1.38.0" || c.VCenterEventKey == 0 {
		t.Fatalf("guestcluster.compatibility = %+v, want an incompatible create check posted to vCenter", c)
	}
	var named bool
	for _, u := range c.Unmet {
		named = named || (u.Provider == "sddc" && u.Name == "vsphere.api.feature/siteInfoManager")
	}
	if !named {
		t.Errorf("unmet %+v does not name the site information manager", c.Unmet)
	}
	ev := h.await(t, events.TypeGuestClusterFailed)
	var f events.GuestClusterFailed
	_ = json.Unmarshal(ev.Data(), &f)
	if f.Reason != ReasonIncompatible || !strings.Contains(f.Message, "siteInfoManager") {
		t.Errorf("guestcluster.failed = %+v, want Incompatible naming siteInfoManager", f)
	}
	rec := h.record(t, "team-a", "gc1")
	cond, ok := conditionOf(rec, events.GuestClusterConditionCompatible)
	if rec.Phase != events.GuestClusterPhaseFailed || rec.Reason != ReasonIncompatible || !ok ||
		cond.Status != events.ConditionFalse || !strings.Contains(cond.Message, "vsphere.api.feature/siteInfoManager") {
		t.Errorf("record = %+v, want Failed with Compatible=False naming the site information manager", rec)
	}
	h.cps.mu.Lock()
	n := len(h.cps.ensured)
	h.cps.mu.Unlock()
	if n != 0 {
		t.Errorf("%d control planes started for an incompatible guest cluster", n)
	}
	found := 0
	for _, m := range h.vcenterEvents(t) {
		if strings.Contains(m, "team-a/gc1 v1.38.0 is incompatible") && strings.Contains(m, "siteInfoManager") {
			found++
		}
	}
	if found != 1 {
		t.Errorf("vCenter events naming gc1's unmet requirements: %d, want 1 (%q)", found, h.vcenterEvents(t))
	}

	// On request the same check answers with the request's id.
	h.publish(t, events.TypeGuestClusterCheckRequested, "team-a/gc1", &events.GuestClusterCheckRequested{ID: "chk-1", Namespace: "team-a", Name: "gc1"})
	c = compatibility(t, h)
	if c.CheckID != "chk-1" || c.Trigger != events.CompatTriggerRequest || c.Compatible || len(c.Unmet) == 0 {
		t.Errorf("answer to the check request = %+v", c)
	}
}

// TestCompatibleGuestClusterRecordsTheCheck: a compatible version is
// checked first (condition True, a vCenter info event), then built.
func TestCompatibleGuestClusterRecordsTheCheck(t *testing.T) {
	h := start(t)
	req := guestCluster()
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	c := compatibility(t, h)
	if !c.Compatible || c.Trigger != events.CompatTriggerCreate || c.VCenterEventKey == 0 {
		t.Fatalf("guestcluster.compatibility = %+v", c)
	}
	h.await(t, events.TypeGuestClusterReady)
	rec := h.record(t, "team-a", "gc1")
	if cond, ok := conditionOf(rec, events.GuestClusterConditionCompatible); !ok || cond.Status != events.ConditionTrue {
		t.Errorf("conditions %+v, want Compatible=True", rec.Conditions)
	}
	if got := h.vcenterEvents(t); len(got) != 1 {
		t.Fatalf("vCenter events after the create: %q, want one", got)
	}
	// Applying the same spec again (a new request) is not checked, posted
	// or published again: the guest cluster is already Ready.
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	if ev := h.await(t, events.TypeGuestClusterReady, events.TypeGuestClusterCompatibility); ev.Type() != events.TypeGuestClusterReady {
		t.Fatalf("the re-apply of an unchanged guest cluster published %s", ev.Type())
	}
	if got := h.vcenterEvents(t); len(got) != 1 {
		t.Errorf("vCenter events after an unchanged re-apply: %q, want still one", got)
	}
	// A version without known requirements is refused naming the known
	// ones, before any check is posted.
	req.GuestCluster.Metadata.Name = "gc2"
	req.GuestCluster.Spec.Version = "v1.20.0"
	h.publish(t, events.TypeGuestClusterRequested, req.ObjectKey(), req)
	ev := h.await(t, events.TypeGuestClusterFailed)
	var f events.GuestClusterFailed
	_ = json.Unmarshal(ev.Data(), &f)
	if f.Name != "gc2" || f.Reason != "UnsupportedVersion" || !strings.Contains(f.Message, "v1.37") {
		t.Errorf("guestcluster.failed = %+v", f)
	}
}

func conditionOf(r events.GuestClusterRecord, t string) (events.PodCondition, bool) {
	for _, c := range r.Conditions {
		if c.Type == t {
			return c, true
		}
	}
	return events.PodCondition{}, false
}

// TestUpgradeIsCheckedAndRefused: asking a running guest cluster for
// another version checks that version (trigger Upgrade, posted to vCenter
// and published); an incompatible one is refused naming the unmet
// requirement; a version podvisor knows no requirements of is refused as
// unsupported. Either way the cluster stays Ready with its version.
func TestUpgradeIsCheckedAndRefused(t *testing.T) {
	h := start(t)
	req := guestCluster()
	h.requestReady(t, req)
	before := len(h.vcenterEvents(t))

	up := guestCluster()
	up.GuestCluster.Spec.Version = "v1.38.0"
	h.publish(t, events.TypeGuestClusterRequested, up.ObjectKey(), up)
	c := compatibility(t, h)
	for c.Trigger != events.CompatTriggerUpgrade {
		c = compatibility(t, h) // the create's check came first
	}
	if c.Compatible || c.Version != "v1.38.0" || c.VCenterEventKey == 0 {
		t.Errorf("guestcluster.compatibility = %+v, want an incompatible upgrade check of v1.38.0 posted to vCenter", c)
	}
	var f events.GuestClusterFailed
	if err := h.await(t, events.TypeGuestClusterFailed).DataAs(&f); err != nil || f.Reason != reasonUpgradeIncompatible ||
		!strings.Contains(f.Message, "vsphere.api.feature/siteInfoManager") {
		t.Errorf("guestcluster.failed = %+v (%v), want %s naming the site information manager", f, err, reasonUpgradeIncompatible)
	}
	if got := h.vcenterEvents(t); len(got) != before+1 || !strings.Contains(got[0]+got[len(got)-1], "v1.38.0") {
		t.Errorf("vCenter events %q, want one more naming v1.38.0", got)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseReady || rec.Spec.Version != "v1.37.2" {
		t.Errorf("record after a refused upgrade: %s %s, want Ready v1.37.2", rec.Phase, rec.Spec.Version)
	}

	up.GuestCluster.Spec.Version = "v1.99.0"
	h.publish(t, events.TypeGuestClusterRequested, up.ObjectKey(), up)
	if err := h.await(t, events.TypeGuestClusterFailed).DataAs(&f); err != nil || !strings.Contains(f.Message, "v1.99.0") {
		t.Errorf("guestcluster.failed = %+v (%v), want the unknown version named", f, err)
	}
	if rec := h.record(t, "team-a", "gc1"); rec.Phase != events.GuestClusterPhaseReady || rec.Spec.Version != "v1.37.2" {
		t.Errorf("record after a refused upgrade to an unknown version: %s %s, want Ready v1.37.2", rec.Phase, rec.Spec.Version)
	}
}
