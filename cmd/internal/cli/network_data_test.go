package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// Pass-through data as a management application drives it from the CLI:
// refused in an unregistered namespace, inherited switch → port group →
// port unless overridden, removed again.
func TestNetworkDataSetGetRemove(t *testing.T) {
	sys, dir := upForTest(t, "netconfig")
	waitDefaultNetworkReady(t, dir)
	// The pod whose port gets data, as the provisioner records it, and a
	// host, as the scheduler's inventory does.
	ctx := context.Background()
	admin, err := sys.Dial(ctx, bus.IdentityAdmin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	putRecord(t, ctx, admin, events.BucketPods, events.PodRecordKey("default", "web"),
		events.PodRecord{UID: "uid-web", Namespace: "default", Name: "web", Networks: []string{"default"}})
	putRecord(t, ctx, admin, events.BucketHosts, events.HostRecordKey("esx-1-01"), events.HostRecord{HostInfo: events.HostInfo{Name: "esx-1-01", Cluster: "cluster-1"}})
	_, errOut, code := run(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict", "--switch", "pv-dvs")
	if code != 1 || !strings.Contains(errOut, "namespace fw.acme.example is not registered") {
		t.Fatalf("set in an unregistered namespace: exit %d, %q", code, errOut)
	}
	if _, _, code := run(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict"); code != 2 {
		t.Fatalf("set without a scope: exit %d, want 2", code)
	}
	mustRun(t, dir, "", "network", "data", "register", "fw.acme.example", "--owner", "acme-fw")
	// A target podvisor does not know is refused, naming the flag: nothing
	// would ever deliver the value.
	for _, tt := range []struct{ flag, target, want string }{
		{"--switch", "nosuch", "--switch nosuch: no network is on that switch"},
		{"--portgroup", "pv-nosuch", "--portgroup pv-nosuch: no network has that port group"},
		{"--port", "default/default/nosuchpod", "--port default/default/nosuchpod: no pod or VM default/nosuchpod on network default"},
		{"--port", "nosuchnet/default/web", "--port nosuchnet/default/web: network nosuchnet not found"},
		{"--host", "esx-9-99", "--host esx-9-99: host not found"},
	} {
		if out, errOut, code := run(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict", tt.flag, tt.target); code != 1 || !strings.Contains(errOut, tt.want) || out != "" {
			t.Errorf("set on %s %s: exit %d, stdout %q, stderr %q; want exit 1 with %q", tt.flag, tt.target, code, out, errOut, tt.want)
		}
	}
	mustRun(t, dir, "", "network", "data", "set", "fw.acme.example/profile", "strict", "--switch", "pv-dvs")
	mustRun(t, dir, "", "network", "data", "set", "fw.acme.example/log", "on", "--portgroup", "pv-default")
	mustRun(t, dir, "", "network", "data", "set", "fw.acme.example/log", "on", "--host", "esx-1-01")
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
