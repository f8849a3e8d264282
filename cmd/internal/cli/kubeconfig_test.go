package cli

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// TestGuestClusterKubeconfigIsForAdmins: a guest cluster's record is
// listed to the client identity of the env file, but its kubeconfig is
// refused to it, with a message naming the admin creds; the same command
// with --nats-creds of the admin identity prints it. So is `topology`:
// refused to the client at once (not after its 30 s timeout), naming the
// admin creds, and done with them.
func TestGuestClusterKubeconfigIsForAdmins(t *testing.T) {
	sys, dir := upForTest(t, "none")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// What the guest cluster controller writes once gc1 is Ready.
	admin, err := sys.Dial(ctx, bus.IdentityAdmin)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	key := events.GuestClusterRecordKey("team-a", "gc1")
	put := func(bucket string, v any) {
		t.Helper()
		putRecord(t, ctx, admin, bucket, key, v)
	}
	const kubeconfig = "apiVersion: v1\nkind: Config\nusers: [{name: admin, user: {client-key-data: c2VjcmV0}}]\n"
	put(events.BucketGuestClusterKubeconfigs, events.GuestClusterKubeconfig{Namespace: "team-a", Name: "gc1", Kubeconfig: kubeconfig})
	put(events.BucketGuestClusters, events.GuestClusterRecord{Namespace: "team-a", Name: "gc1", Phase: events.GuestClusterPhaseReady,
		Endpoint: "https://127.0.0.1:6443", HasKubeconfig: true, Spec: events.GuestClusterSpec{Version: "v1.37.2"}})

	out, errOut, code := run(t, dir, "", "get", "guestcluster", "gc1", "-n", "team-a", "-o", "json")
	if code != 0 || !strings.Contains(out, `"gc1"`) || strings.Contains(out, "client-key-data") {
		t.Fatalf("get guestcluster -o json as the client: %d %s %s", code, out, errOut)
	}
	out, errOut, code = run(t, dir, "", "get", "guestcluster", "gc1", "-n", "team-a", "--kubeconfig")
	if code == 0 || strings.Contains(out, "client-key-data") {
		t.Fatalf("the client identity got the kubeconfig: %d %q", code, out)
	}
	if !strings.Contains(errOut, "admin.creds") || !strings.Contains(strings.ToLower(errOut), "permissions violation") {
		t.Errorf("refusal says %q, want the permissions violation and the admin creds to use", errOut)
	}
	adminCreds := filepath.Join(dir, "nats-auth", "admin.creds")
	out, errOut, code = run(t, dir, "", "--nats-creds", adminCreds, "get", "guestcluster", "gc1", "-n", "team-a", "--kubeconfig")
	if code != 0 || out != kubeconfig {
		t.Fatalf("get --kubeconfig as admin: %d %q %s", code, out, errOut)
	}

	start := time.Now()
	out, errOut, code = run(t, dir, "", "topology")
	if took := time.Since(start); code != 1 || took > 5*time.Second || !strings.Contains(errOut, "admin.creds") ||
		!strings.Contains(strings.ToLower(errOut), "permissions violation") || !strings.Contains(errOut, "$JS.API.STREAM.") {
		t.Errorf("topology as the client: exit %d after %s, stdout %q, stderr %q; want exit 1 at once, naming the subject refused and the admin creds",
			code, took.Round(time.Millisecond), out, errOut)
	}
	if out, errOut, code := run(t, dir, "", "--nats-creds", adminCreds, "topology"); code != 0 || out != "streams and buckets declared\n" {
		t.Errorf("topology as admin: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
