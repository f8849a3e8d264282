package cli

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestPodPlacedOnAnotherHostWhenItsNetworkIsNotAvailable is the acceptance
// of network-aware placement as a user meets it on `podvisor up`: host X
// reads back without the default network's port group (its own status; the
// read model still says realized), a pod whose best candidate is X is
// requested, and it runs on the other host, with X's refusal on its
// NetworkRefused condition in `get -o yaml` and `describe`.
func TestPodPlacedOnAnotherHostWhenItsNetworkIsNotAvailable(t *testing.T) {
	sys, dir := guestsUp(t, "pods run their containers in simulated guests", allinone.Config{HostsPerCluster: 2})
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	reg := vars["PODVISOR_REGISTRY"]
	pod := func(name string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "}\nspec: {terminationGracePeriodSeconds: 1, containers: [{name: c, image: " +
			reg + "/podvisor/busybox:1.0, command: [sleep, '3600']}]}\n"
	}
	field := func(name, path string) string {
		out, _, _ := run(t, dir, "", "get", "pod", name, "-o", "jsonpath="+path)
		return out
	}
	eventuallyWithin(t, 30*time.Second, "the default network ready", func() bool {
		out, _, _ := run(t, dir, "", "get", "networks")
		return strings.Contains(out, "Ready")
	})

	// A first pod takes one host; with the default spread strategy the next
	// pod's best candidate is the other one, X.
	mustRun(t, dir, pod("first"), "apply", "-f", "-")
	eventuallyWithin(t, 90*time.Second, "first Running", func() bool { return field("first", "{.status.phase}") == "Running" })
	taken := field("first", "{.spec.nodeName}")
	var x string
	for _, h := range sys.Datacenter.Hosts() {
		if h.Name != taken {
			x = h.Name
		}
	}
	if taken == "" || x == "" {
		t.Fatalf("first runs on %q; hosts %v", taken, sys.Datacenter.Hosts())
	}

	// X loses the port group in its own configuration, behind the
	// control plane's back: only asking the host shows it.
	simtest.DropHostPortGroup(t, sys.Datacenter, x, events.PortGroupName("default"))

	mustRun(t, dir, pod("second"), "apply", "-f", "-")
	eventuallyWithin(t, 90*time.Second, "second Running", func() bool { return field("second", "{.status.phase}") == "Running" })
	if host := field("second", "{.spec.nodeName}"); host != taken {
		t.Errorf("second runs on %q, want %s: %s refused the network", host, taken, x)
	}
	yaml := mustRun(t, dir, "", "get", "pod", "second", "-o", "yaml")
	if !strings.Contains(yaml, events.PodConditionNetworkRefused) || !strings.Contains(yaml, x+": network default NetworkUnavailable") {
		t.Errorf("get pod second -o yaml does not show %s's refusal on a NetworkRefused condition:\n%s", x, yaml)
	}
	desc := mustRun(t, dir, "", "describe", "pod", "second")
	if !strings.Contains(desc, events.PodConditionNetworkRefused) || !strings.Contains(desc, "port group pv-default") {
		t.Errorf("describe pod second does not show the refusal with the host's reason:\n%s", desc)
	}
}
