package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// describe guestcluster (and its aliases) shows the guest cluster as its
// controller recorded it: phase, endpoint, conditions, the control plane
// and each worker with its state, a refused worker with the refusal's
// reason, field and message; then the events about it.
func TestDescribeGuestClusterShowsARefusedWorker(t *testing.T) {
	b := bustest.Start(t)
	ctx := context.Background()
	created := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	refusal := "Rejected (NotFound, field spec.imageName): VirtualMachineImage vmos-9 not found; declared again when the guest cluster is applied again or VirtualMachineImage vmos-9 is declared"
	// As the guest cluster controller writes it when the native VM
	// controller refused gc1-worker-1's declaration (vm.rejected).
	rec := events.GuestClusterRecord{Namespace: "team-a", Name: "gc1", Phase: events.GuestClusterPhaseReady,
		Spec: events.GuestClusterSpec{Version: "v1.37.2", Network: "default", Namespaces: []string{"team-a-apps"},
			ControlPlane: events.GuestClusterNodes{Replicas: 1, ClassName: "small"},
			Workers:      events.GuestClusterNodes{Replicas: 2, ClassName: "small", ImageName: "vmos-9"}},
		Endpoint: "https://10.0.0.5:6443", HasKubeconfig: true, Identity: "gc-team-a-gc1", CreatedAt: created,
		Conditions: []events.PodCondition{
			{Type: events.GuestClusterConditionCompatible, Status: events.ConditionTrue, Reason: "Compatible", Time: created},
			{Type: "WorkersAccepted", Status: events.ConditionFalse, Reason: "NotFound", Time: created,
				Message: "gc1-worker-1: NotFound, field spec.imageName: VirtualMachineImage vmos-9 not found"}},
		ControlPlanes: []events.GuestNode{{Name: "gc1-cp-0", Ready: true, Host: "esx-1", IPs: []string{"10.0.0.5"}, ClassName: "small",
			CPUs: 2, MemoryBytes: 4 << 30}},
		ReadyControlPlanes: 1,
		Workers: []events.GuestNode{
			{Name: "gc1-worker-0", Ready: true, Host: "esx-2", IPs: []string{"10.0.0.9"}, ClassName: "small", CPUs: 2, MemoryBytes: 4 << 30},
			{Name: "gc1-worker-1", ClassName: "small", Message: refusal}},
		ReadyWorkers: 1,
	}
	data, _ := json.Marshal(rec)
	kv, err := b.KV(ctx, events.BucketGuestClusters)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, rec.Key(), data); err != nil {
		t.Fatal(err)
	}
	ev, err := bus.NewEvent("podvisor/guestcluster", events.TypeGuestClusterReady, "team-a/gc1",
		&events.GuestClusterReady{GuestClusterRef: events.GuestClusterRef{Namespace: "team-a", Name: "gc1"}, Endpoint: rec.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	url := b.Conn().ConnectedUrl()

	space := regexp.MustCompile(` +`)
	for _, kind := range []string{"guestcluster", "guestclusters", "gc"} {
		out, errOut, code := runTool(t, url, "describe", kind, "gc1", "-n", "team-a")
		if code != 0 {
			t.Fatalf("describe %s: exit %d: %s", kind, code, errOut)
		}
		flat := space.ReplaceAllString(out, " ")
		for _, want := range []string{
			"Name: gc1\nNamespace: team-a\nVersion: v1.37.2\n",
			"Phase: Ready\n",
			"Endpoint: https://10.0.0.5:6443\n",
			"Namespaces: team-a, team-a-apps\n",
			" Compatible True ",
			" WorkersAccepted False " + created.Format(time.TimeOnly) + " NotFound gc1-worker-1: NotFound, field spec.imageName",
			"Control Planes (1/1 ready; class small, image guestcluster-node):\n gc1-cp-0 Ready small on esx-1 (10.0.0.5), 2 vCPU",
			"Workers (1/2 ready; class small, image vmos-9):\n gc1-worker-0 Ready small on esx-2 (10.0.0.9)",
			" gc1-worker-1 NotReady small " + refusal + "\n",
			"guestcluster.ready",
		} {
			if !strings.Contains(flat, want) {
				t.Errorf("describe %s lacks %q:\n%s", kind, want, out)
			}
		}
	}
	if _, errOut, code := runTool(t, url, "describe", "gc", "gone", "-n", "team-a"); code != 1 || !strings.Contains(errOut, "guestcluster team-a/gone not found") {
		t.Errorf("describe of a guest cluster that does not exist: exit %d, %q; want 1 and not found", code, errOut)
	}
}
