package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestGuestClusterCompatibilityThroughTheCLI is the acceptance for
// compatibility checks, on `podvisor up`: a GuestCluster whose version
// requires an API feature the vCenter does not offer is refused with that
// feature named (get guestcluster shows it Failed with the Compatible
// condition), the vCenter event is on the cluster (as `govc events` lists
// it), and `podvisor check guestcluster` answers, exiting 1 with each
// unmet requirement; a guest cluster podvisor does not know is an error.
func TestGuestClusterCompatibilityThroughTheCLI(t *testing.T) {
	sys, dir := startUp(t, "guestcluster", allinone.Config{HostsPerCluster: 1, Guests: allinone.GuestsOff})
	gc := `apiVersion: podvisor.io/v1alpha1
kind: GuestCluster
metadata: {name: gc2, namespace: team-a}
spec: {version: v1.38.0, controlPlane: {replicas: 1, className: small}, workers: {replicas: 1, className: small}}
`
	if out, errOut, code := run(t, dir, gc, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	const feature = "vsphere.api.feature/siteInfoManager"
	var rec events.GuestClusterRecord
	eventuallyWithin(t, 30*time.Second, "gc2 refused", func() bool {
		out, _, code := run(t, dir, "", "get", "guestcluster", "gc2", "-n", "team-a", "-o", "json")
		return code == 0 && json.Unmarshal([]byte(out), &rec) == nil && rec.Phase == events.GuestClusterPhaseFailed
	})
	if rec.Reason != "Incompatible" || len(rec.Conditions) != 1 || rec.Conditions[0].Type != events.GuestClusterConditionCompatible ||
		rec.Conditions[0].Status != events.ConditionFalse || !strings.Contains(rec.Conditions[0].Message, feature) {
		t.Errorf("gc2 = %+v, want Failed, Incompatible, condition Compatible=False naming %s", rec, feature)
	}

	out, errOut, code := run(t, dir, "", "check", "guestcluster", "gc2", "-n", "team-a")
	if code != 1 || !strings.Contains(out, "unmet: sddc "+feature+" present (not offered)") || !strings.Contains(out, "vCenter event") {
		t.Errorf("check guestcluster gc2: exit %d\n%s%s\nwant exit 1 naming %s and the vCenter event", code, out, errOut, feature)
	}
	if _, errOut, code := run(t, dir, "", "check", "guestcluster", "nope", "-n", "team-a"); code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("check of an unknown guest cluster: exit %d %s", code, errOut)
	}

	// vCenter's view: one warning per check (the create's and the
	// request's), on the cluster, naming the feature.
	c := simtest.Client(t, sys.Datacenter)
	cluster := sys.Datacenter.Clusters()[0].Ref
	found := 0
	for _, e := range simtest.EventsOn(t, c, cluster) {
		ex, ok := e.(*types.EventEx)
		if ok && ex.Severity == string(types.EventEventSeverityWarning) && strings.Contains(ex.FullFormattedMessage, "team-a/gc2") &&
			strings.Contains(ex.FullFormattedMessage, feature) {
			found++
		}
	}
	if found != 2 {
		t.Errorf("vCenter warnings on the cluster naming gc2 and %s: %d, want 2", feature, found)
	}
}
