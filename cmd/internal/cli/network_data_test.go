package cli

import (
	"strings"
	"testing"
)

// Pass-through data as a management application drives it from the CLI:
// refused in an unregistered namespace, inherited switch → port group →
// port unless overridden, removed again.
func TestNetworkDataSetGetRemove(t *testing.T) {
	_, dir := upForTest(t, "netconfig")
	waitDefaultNetworkReady(t, dir)
	_, errOut, code := run(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict", "--switch", "pv-dvs")
	if code != 1 || !strings.Contains(errOut, "namespace fw.acme.example is not registered") {
		t.Fatalf("set in an unregistered namespace: exit %d, %q", code, errOut)
	}
	if _, _, code := run(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict"); code != 2 {
		t.Fatalf("set without a scope: exit %d, want 2", code)
	}
	mustRun(t, dir, "", "network", "data", "register", "fw.acme.example", "--owner", "acme-fw")
	mustRun(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict", "--switch", "pv-dvs")
	mustRun(t, dir, "", "network", "data", "set", "fw.acme.example/log", "on", "--portgroup", "pv-default")
	mustRun(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "open", "--port", "default/default/web")

	out := mustRun(t, dir, "", "network", "data", "get", "--port", "default/default/web")
	for _, want := range []string{"fw.acme.example/log on portgroup pv-default", "fw.acme.example/profile open port default/default/web"} {
		if !hasRow(out, want) {
			t.Fatalf("get --port:\n%s\nwant a line %q", out, want)
		}
	}
	out = mustRun(t, dir, "", "network", "data", "get", "--portgroup", "pv-default")
	if !hasRow(out, "fw.acme.example/profile strict switch pv-dvs") {
		t.Fatalf("get --portgroup:\n%s\nwant the switch's profile inherited", out)
	}
	mustRun(t, dir, "", "network", "data", "rm", "fw.acme.example/profile", "--port", "default/default/web")
	out = mustRun(t, dir, "", "network", "data", "get", "fw.acme.example/profile", "--port", "default/default/web")
	if !hasRow(out, "fw.acme.example/profile strict switch pv-dvs") {
		t.Fatalf("after rm the port inherits again:\n%s", out)
	}
}

// hasRow reports whether a table has a row of these space-separated cells.
func hasRow(table, row string) bool {
	for _, line := range strings.Split(table, "\n") {
		if strings.Join(strings.Fields(line), " ") == row {
			return true
		}
	}
	return false
}
