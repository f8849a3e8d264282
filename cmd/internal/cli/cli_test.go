package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// upForTest runs the all-in-one in this process on free ports, as
// `podvisor up` would, and returns its state dir.
func upForTest(t *testing.T, services string) (*allinone.System, string) {
	t.Helper()
	return startUp(t, services, allinone.Config{HostsPerCluster: 2})
}

// run executes the CLI like a user with only the state dir to go on.
func run(t *testing.T, stateDir string, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	for _, k := range []string{"PODVISOR_NATS_URL", "PODVISOR_NATS_CREDS", "PODVISOR_NATS_CA", "PODVISOR_REDIS_URL", "PODVISOR_REDIS_CA"} {
		t.Setenv(k, "")
	}
	if os.Getenv("PODVISOR_CONFIG") == "" {
		t.Setenv("PODVISOR_CONFIG", filepath.Join(stateDir, "no-cli-config"))
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = Main(ctx, append([]string{"--state-dir", stateDir}, args...), strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// waitDefaultNetworkReady waits until `get networks` lists a Ready network
// (the default one network-config realizes on up).
func waitDefaultNetworkReady(t *testing.T, dir string) {
	t.Helper()
	eventually(t, "the default network", func() bool {
		out, _, _ := run(t, dir, "", "get", "networks")
		return strings.Contains(out, "Ready")
	})
}

func TestEnvFileNamesEveryEndpoint(t *testing.T) {
	sys, dir := upForTest(t, "none")
	vars, err := serve.ReadEnvFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"PODVISOR_NATS_URL", "PODVISOR_NATS_CREDS", "PODVISOR_NATS_CA", "NATS_CREDS", "NATS_CA", "GOVC_URL", "GOVC_TLS_CA_CERTS",
		"PODVISOR_REDIS_URL", "PODVISOR_REDIS_CA", "PODVISOR_REGISTRY", "PODVISOR_REGISTRY_CA", "PODVISOR_UI_URL"} {
		if vars[k] == "" {
			t.Errorf("env file lacks %s", k)
		}
	}
	if _, set := vars["GOVC_INSECURE"]; set {
		t.Error("env file turns off vCenter certificate checks (GOVC_INSECURE)")
	}
	for _, k := range []string{"PODVISOR_NATS_URL", "GOVC_URL", "PODVISOR_REDIS_URL", "PODVISOR_UI_URL"} {
		if u := vars[k]; !strings.HasPrefix(u, "tls://") && !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "rediss://") {
			t.Errorf("%s = %s: not a TLS endpoint", k, u)
		}
	}
	checkRegistryTLS(t, vars["PODVISOR_REGISTRY"], vars["PODVISOR_REGISTRY_CA"])
	// The banner names the status page; no guests run here, so neither it
	// nor the env file claims host agents.
	var banner strings.Builder
	sys.PrintEndpoints(&banner, "env", time.Second)
	if !strings.Contains(banner.String(), "  status    "+vars["PODVISOR_UI_URL"]+" (status page") || strings.Contains(banner.String(), "host agents:") {
		t.Errorf("banner:\n%s\nwant the status page at %s and no host agents", banner.String(), vars["PODVISOR_UI_URL"])
	}
	if _, set := vars["PODVISOR_HOST_AGENTS"]; set || sys.GuestsOff == "" {
		t.Errorf("env file names host agents (%q) or guests run (GuestsOff %q) in a test without guests", vars["PODVISOR_HOST_AGENTS"], sys.GuestsOff)
	}
	if vars["GOVC_URL"] != sys.Endpoints.VCenterURL || !strings.Contains(vars["GOVC_URL"], "podvisor:") {
		t.Errorf("GOVC_URL = %q, want the simulator URL with credentials", vars["GOVC_URL"])
	}
	// Services run with `podvisor serve` beside this up get the simulator's
	// settings too (polling hosts, the short probe window).
	if vars["PODVISOR_SCHEDULER_INVENTORY_POLL"] != "1s" || vars["PODVISOR_NETCONFIG_PROBE_WINDOW"] != "1s" {
		t.Errorf("simulator settings in the env file: poll %q, probe window %q; want 1s each",
			vars["PODVISOR_SCHEDULER_INVENTORY_POLL"], vars["PODVISOR_NETCONFIG_PROBE_WINDOW"])
	}
}

func TestStructuredEventFromPlainNATSIsStoredAndShown(t *testing.T) {
	_, dir := upForTest(t, "none")
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	nc := natsForTest(t, vars)
	publishPodRequest(t, nc, "nats-cli", "ext-1", "default/hello",
		`{"pod":{"metadata":{"name":"hello"},"spec":{"containers":[{"name":"c","image":"registry.local/podvisor/base:1.0"}]}}}`)
	out, errOut, code := run(t, dir, "", "events", "-o", "json", "--type", "pod.requested")
	if code != 0 {
		t.Fatalf("events exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 {
		t.Fatalf("events printed %d lines, want 1:\n%s", len(lines), out)
	}
	var ce map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &ce); err != nil {
		t.Fatalf("not JSON: %v: %s", err, lines[0])
	}
	if ce["id"] != "ext-1" || ce["type"] != "io.podvisor.pod.requested.v1" || ce["subject"] != "default/hello" || ce["specversion"] != "1.0" {
		t.Fatalf("structured event = %v", ce)
	}
}

func TestMalformedPodRequestIsDeadLetteredWithReason(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	nc := natsForTest(t, vars)
	// An empty dead-letter stream says so, as an empty get does; JSON
	// prints no line.
	if out, errOut, code := run(t, dir, "", "events", "--dlq"); code != 0 || out != "No dead-lettered events found.\n" {
		t.Errorf("events --dlq with no dead letters: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out, _, _ := run(t, dir, "", "events", "--dlq", "-o", "json"); out != "" {
		t.Errorf("events --dlq -o json with no dead letters: %q, want nothing", out)
	}
	publishPodRequest(t, nc, "nats-cli", "bad-1", "default/x", `{"hello":"world"}`)
	var out string
	eventually(t, "a dead letter", func() bool {
		out, _, _ = run(t, dir, "", "events", "--dlq", "-o", "json")
		return strings.Contains(out, "bad-1") || strings.Contains(out, "hello")
	})
	var dl map[string]any
	if err := json.Unmarshal([]byte(strings.Split(strings.TrimSpace(out), "\n")[0]), &dl); err != nil {
		t.Fatal(err)
	}
	reason, _ := dl["reason"].(string)
	if dl["service"] != "provisioner" || !strings.Contains(reason, "hello") || dl["type"] != "io.podvisor.pod.requested.v1" {
		t.Fatalf("dead letter = %v, want service provisioner and a reason naming the unknown field", dl)
	}
	table, _, _ := run(t, dir, "", "events", "--dlq")
	if !strings.Contains(table, "REASON") || !strings.Contains(table, "provisioner") {
		t.Fatalf("dlq table:\n%s", table)
	}
}

// A pod.requested whose subject is not its payload's pod is dead-lettered
// with a reason naming both, and creates neither pod.
func TestMismatchedSubjectIsDeadLetteredWithReason(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	nc := natsForTest(t, vars)
	publishPodRequest(t, nc, "nats-cli", "mismatch-1", "default/mismatch",
		`{"pod":{"metadata":{"name":"other"},"spec":{"containers":[{"name":"c","image":"registry.local/podvisor/base:1.0"}]}}}`)
	publishPodRequest(t, nc, "nats-cli", "mismatch-2", "team-a/nsx",
		`{"pod":{"metadata":{"name":"nsx","namespace":"team-b"},"spec":{"containers":[{"name":"c","image":"registry.local/podvisor/base:1.0"}]}}}`)
	var out string
	eventually(t, "two dead letters", func() bool {
		out, _, _ = run(t, dir, "", "events", "--dlq", "-o", "json")
		return strings.Count(strings.TrimSpace(out), "\n") == 1
	})
	for _, want := range [][]string{{`default/mismatch`, `default/other`}, {`team-a/nsx`, `team-b/nsx`}} {
		found := false
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var dl map[string]any
			if err := json.Unmarshal([]byte(line), &dl); err != nil {
				t.Fatal(err)
			}
			reason, _ := dl["reason"].(string)
			found = found || dl["service"] == "provisioner" && strings.Contains(reason, want[0]) && strings.Contains(reason, want[1])
		}
		if !found {
			t.Errorf("no dead letter naming subject %s and payload key %s:\n%s", want[0], want[1], out)
		}
	}
	for _, ns := range []string{"default", "team-a", "team-b"} {
		if pods, errOut, code := run(t, dir, "", "get", "pods", "-n", ns, "-o", "name"); code != 0 || strings.TrimSpace(pods) != "" {
			t.Errorf("get pods -n %s: exit %d, %q %s; want none", ns, code, pods, errOut)
		}
	}
}

func TestApplyRejectsBadManifestBeforePublishing(t *testing.T) {
	_, dir := upForTest(t, "none")
	manifest := `apiVersion: v1
kind: Pod
metadata: {name: ok}
spec: {containers: [{name: a, image: registry.local/a:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  containers:
  - name: a
    image: registry.local/a:1
    resources: {requests: {memory: 12Gx}}
`
	_, errOut, code := run(t, dir, manifest, "apply", "-f", "-")
	if code == 0 {
		t.Fatal("apply of an invalid manifest exited 0")
	}
	if !strings.Contains(errOut, "document 2") || !strings.Contains(errOut, "resources.requests.memory") {
		t.Fatalf("error does not name the document and field:\n%s", errOut)
	}
	out, _, _ := run(t, dir, "", "events", "-o", "json", "--type", "pod.*")
	if strings.TrimSpace(out) != "" {
		t.Fatalf("a rejected manifest published events:\n%s", out)
	}
}

func TestApplyWaitsForAdmissionAndGetShowsKubernetesShape(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
	out, errOut, code := run(t, dir, pod, "apply", "-f", "-")
	if code != 0 || !strings.Contains(out, "pod/shop/web accepted") {
		t.Fatalf("apply: exit %d, out %q, err %q", code, out, errOut)
	}
	out, _, code = run(t, dir, "", "get", "pods", "-n", "shop")
	if code != 0 || !strings.Contains(out, "NAMESPACE") || !strings.Contains(out, "web") {
		t.Fatalf("get pods: exit %d:\n%s", code, out)
	}
	out, _, code = run(t, dir, "", "get", "pod", "web", "-n", "shop", "-o", "json")
	if code != 0 {
		t.Fatalf("get pod -o json exit %d", code)
	}
	var k8s struct {
		Kind     string `json:"kind"`
		Metadata struct{ Name, Namespace, UID string }
		Status   struct{ Phase string }
	}
	if err := json.Unmarshal([]byte(out), &k8s); err != nil {
		t.Fatalf("get pod -o json: %v\n%s", err, out)
	}
	if k8s.Metadata.Name != "web" || k8s.Metadata.Namespace != "shop" || k8s.Metadata.UID == "" || k8s.Status.Phase == "" {
		t.Fatalf("pod = %+v", k8s)
	}
	_, errOut, code = run(t, dir, "", "get", "pod", "nope", "-n", "shop")
	if code == 0 || !strings.Contains(errOut, `"shop/nope" not found`) {
		t.Fatalf("get of a missing pod: exit %d, %q", code, errOut)
	}
	_, errOut, code = run(t, dir, "", "delete", "pod", "nope", "-n", "shop")
	if code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("delete of a missing pod: exit %d, %q", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "gizmos"}, `unknown kind "gizmos"`},
		{[]string{"get", "pods", "-o", "xml"}, `-o "xml"`},
		{[]string{"apply"}, "-f is required"},
		{[]string{"serve", "nope"}, `unknown service "nope"`},
		{[]string{"get", "pods"}, "start `podvisor up`"},
	} {
		_, errOut, code := run(t, dir, "", tt.args...)
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, stderr %q, want non-zero and %q", tt.args, code, errOut, tt.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "env")); err == nil {
		t.Error("a failed command wrote an env file")
	}
}

// A client that re-sends the same event (same source and id) after the pod
// was deleted gets a new pod, not silence from a de-duplicated answer.
func TestResentRequestAfterDeleteIsAdmittedAgain(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	nc := natsForTest(t, vars)
	request := func() {
		t.Helper()
		publishPodRequest(t, nc, "me", "1", "default/again",
			`{"pod":{"metadata":{"name":"again"},"spec":{"containers":[{"name":"c","image":"registry.local/base:1.0"}]}}}`)
	}
	uidOf := func() string {
		out, _, code := run(t, dir, "", "get", "pod", "again", "-o", "json")
		if code != 0 {
			return ""
		}
		var p struct{ Metadata struct{ UID string } }
		json.Unmarshal([]byte(out), &p)
		return p.Metadata.UID
	}
	accepted := func() int {
		out, _, _ := run(t, dir, "", "events", "--type", "pod.accepted")
		return strings.Count(out, "default/again")
	}
	request()
	eventually(t, "the first admission", func() bool { return uidOf() != "" && accepted() == 1 })
	first := uidOf()
	if _, _, code := run(t, dir, "", "delete", "pod", "again"); code != 0 {
		t.Fatal("delete failed")
	}
	eventually(t, "the deletion", func() bool { return uidOf() == "" })
	request()
	eventually(t, "the second admission", func() bool { return uidOf() != "" && accepted() == 2 })
	if second := uidOf(); second == first {
		t.Fatalf("the re-created pod kept uid %s of the deleted one", first)
	}
}

// A network in use refuses what would cut its pods off, and the CLI says so
// with the reason: a delete, and an apply or a restore whose spec.cidr would
// leave a held address outside the range (exit 1 naming InUse and the pod;
// the current version stays). A widening that keeps every address is
// accepted, and apply says so once network-config has applied it.
func TestNetworkInUseIsRefused(t *testing.T) {
	_, dir := upForTest(t, "provisioner,scheduler,netconfig")
	waitDefaultNetworkReady(t, dir)
	web := "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: web}\nspec: {vlan: 140, cidr: 10.40.0.0/24, gateway: 10.40.0.1}\n"
	moved := strings.Replace(web, "cidr: 10.40.0.0/24, gateway: 10.40.0.1", "cidr: 10.41.0.0/24, gateway: 10.41.0.1", 1)
	// Version 1 on 10.41, version 2 on 10.40 while nobody holds an address.
	if out, errOut, code := run(t, dir, moved, "apply", "-f", "-"); code != 0 || out != "network/web requested\nnetwork/web accepted: version 1 ready\n" {
		t.Fatalf("apply of a new network: exit %d, %q, %q; want it requested, then accepted as version 1, ready", code, out, errOut)
	}
	if out, errOut, code := run(t, dir, web, "apply", "-f", "-"); code != 0 || !strings.Contains(out, "network/web accepted: version 2 ready") {
		t.Fatalf("apply of another CIDR on an unused network: exit %d, %q, %q; want version 2 accepted", code, out, errOut)
	}
	pods := "apiVersion: v1\nkind: Pod\nmetadata: {name: user}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n" +
		"---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-user, annotations: {podvisor.io/networks: web}}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
	if _, errOut, code := run(t, dir, pods, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %s", errOut)
	}
	eventually(t, "addresses on the default network and on web", func() bool {
		out, _, _ := run(t, dir, "", "get", "pods")
		return strings.Contains(out, "10.88.") && strings.Contains(out, "10.40.0.")
	})
	_, errOut, code := run(t, dir, "", "delete", "network", "default")
	if code != 1 || !strings.Contains(errOut, "refused") || !strings.Contains(errOut, "default/user") {
		t.Fatalf("delete network in use: exit %d, stderr %q; want exit 1 with the reason naming the pod", code, errOut)
	}

	out, errOut, code := run(t, dir, moved, "apply", "-f", "-")
	if code != 1 || !strings.Contains(out, "network/web rejected: InUse: ") || !strings.Contains(out, "default/web-user 10.40.0.") {
		t.Fatalf("apply of a CIDR that strands web-user's address: exit %d, %q, %q; want exit 1, rejected with InUse naming the pod", code, out, errOut)
	}
	if got := networkState(t, dir, "web"); got != "2 140 Ready" {
		t.Fatalf("web after the refused change: %s, want version 2 still applied", got)
	}
	// The same refused change again is refused again, not taken for the
	// refusal already recorded.
	if out, _, code := run(t, dir, moved, "apply", "-f", "-"); code != 1 || !strings.Contains(out, "rejected: InUse") {
		t.Fatalf("second apply of the stranding change: exit %d, %q", code, out)
	}
	// Restoring version 1 (10.41) would strand it too: refused at once,
	// not after restore's whole wait.
	start := time.Now()
	if _, errOut, code := run(t, dir, "", "network", "restore", "web", "--version", "1"); code != 1 || !strings.Contains(errOut, "refused: InUse: ") {
		t.Fatalf("restore of a version that strands web-user's address: exit %d, %q; want exit 1, refused with InUse", code, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refused restore took %s to say so", took)
	}
	wider := strings.Replace(web, "cidr: 10.40.0.0/24", "cidr: 10.40.0.0/23", 1)
	if out, errOut, code := run(t, dir, wider, "apply", "-f", "-"); code != 0 || !strings.Contains(out, "network/web accepted: version 3 ready") {
		t.Fatalf("apply of a widening: exit %d, %q, %q; want version 3 accepted", code, out, errOut)
	}
}

func TestGetWatchFollowsChangesAndDeletion(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	t.Setenv("PODVISOR_NATS_URL", "")
	var out, errb syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"--state-dir", dir, "get", "pods", "-w"}, strings.NewReader(""), &out, &errb)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("get -w exit %d: %s", code, errb.String())
		}
	}()
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: watched}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
	if _, errOut, code := run(t, dir, pod, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %s", errOut)
	}
	eventually(t, "the watch to show the new pod", func() bool { return strings.Contains(out.String(), "watched") })
	if _, errOut, code := run(t, dir, "", "delete", "pod", "watched"); code != 0 {
		t.Fatalf("delete: %s", errOut)
	}
	eventually(t, "the watch to show the deletion", func() bool {
		return strings.Contains(out.String(), "pod default/watched deleted")
	})
}

// `events -w` prints the history, then every new event as it comes.
func TestEventsWatchFollowsNewEvents(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	t.Setenv("PODVISOR_NATS_URL", "")
	pod := func(name string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
	}
	if _, errOut, code := run(t, dir, pod("before"), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %s", errOut)
	}
	var out, errb syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"--state-dir", dir, "events", "-w", "--type", "pod.requested", "-o", "json"}, strings.NewReader(""), &out, &errb)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("events -w exit %d: %s", code, errb.String())
		}
	}()
	eventually(t, "the history", func() bool { return strings.Contains(out.String(), `"before"`) })
	if _, errOut, code := run(t, dir, pod("after"), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %s", errOut)
	}
	eventually(t, "the new event: "+errb.String(), func() bool { return strings.Contains(out.String(), `"after"`) })
	if n := strings.Count(out.String(), `"before"`); n != 1 {
		t.Errorf("the history's event printed %d times, want once:\n%s", n, out.String())
	}
	// One event a line, nothing between the history and the new events.
	if strings.Contains(out.String(), "\n\n") || strings.HasPrefix(out.String(), "\n") {
		t.Errorf("events -o json -w printed a blank line:\n%q", out.String())
	}
}

// A service whose configuration is invalid stops `up` before anything
// starts: exit 2, the service and the setting named, and never "up".
func TestUpRefusesBadServiceConfigBeforeStarting(t *testing.T) {
	t.Setenv("PODVISOR_SCHEDULER_BATCH_SIZE", "0")
	out, errOut, code := run(t, t.TempDir(), "", "up", "--nats-port", "0", "--vcenter-port", "0")
	if code != 2 || !strings.Contains(errOut, "scheduler") || !strings.Contains(errOut, "BatchSize") {
		t.Fatalf("up with a bad scheduler setting: exit %d, stderr %q; want 2 naming scheduler and BatchSize", code, errOut)
	}
	if strings.Contains(out, "podvisor is up") {
		t.Fatalf("up announced itself despite the bad setting: %q", out)
	}
}

// A wrong number of arguments or an unknown command is a usage error,
// exit 2, like a bad flag.
func TestWrongArgumentCountExitsTwo(t *testing.T) {
	for _, args := range [][]string{{"describe", "pod", "a", "b"}, {"up", "extra"}, {"trace", "pod"}, {"bogus"}, {"bogus", "--nats-url", "x"}} {
		if _, errOut, code := run(t, t.TempDir(), "", args...); code != 2 || errOut == "" {
			t.Errorf("podvisor %s: exit %d, stderr %q; want 2 with a message", strings.Join(args, " "), code, errOut)
		}
	}
}

// natsFromEnv is a plain nats.go client with what the env file gives a
// user: the client's creds and the CA.
func natsFromEnv(vars map[string]string) (*nats.Conn, error) {
	return nats.Connect(vars["PODVISOR_NATS_URL"], nats.UserCredentials(vars["PODVISOR_NATS_CREDS"]), nats.RootCAs(vars["PODVISOR_NATS_CA"]))
}

// natsForTest connects to the NATS server an env file of `podvisor up`
// names, as its clients do; the connection closes when the test ends.
func natsForTest(t *testing.T, vars map[string]string) *nats.Conn {
	t.Helper()
	nc, err := natsFromEnv(vars)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// publishPodRequest sends what `nats pub pv.pod.requested '<json>'` would: a
// bare structured CloudEvent of type pod.requested with the given source, id,
// subject and JSON data. It fails the test unless the stream stores it.
func publishPodRequest(t *testing.T, nc *nats.Conn, source, id, subject, data string) {
	t.Helper()
	body := fmt.Sprintf(`{"specversion":"1.0","type":"io.podvisor.pod.requested.v1","source":%q,"id":%q,
	  "subject":%q,"datacontenttype":"application/json","data":%s}`, source, id, subject, data)
	if _, err := nc.Request("pv.pod.requested", []byte(body), 5*time.Second); err != nil {
		t.Fatalf("publish to the stream: %v", err)
	}
}

// putRecord writes v as JSON under key in a KV bucket, as the service that
// owns the bucket would, so that a test sets up the state it needs without
// running that service.
func putRecord(t *testing.T, ctx context.Context, b *bus.Bus, bucket, key string, v any) {
	t.Helper()
	kv, err := b.KV(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, key, data); err != nil {
		t.Fatal(err)
	}
}

// TestContextsChooseTheInstallation: with no env file to go on, the current
// context of the CLI config says where NATS is and with which creds and CA.
func TestContextsChooseTheInstallation(t *testing.T) {
	_, dir := upForTest(t, "none")
	t.Setenv("PODVISOR_CONFIG", filepath.Join(t.TempDir(), "config"))
	empty := t.TempDir()
	if _, errOut, code := run(t, empty, "", "get", "pods"); code == 0 {
		t.Fatalf("get pods without env file or context succeeded: %s", errOut)
	}
	if out, errOut, code := run(t, dir, "", "config", "set-context", "lab", "--from-env"); code != 0 || !strings.Contains(out, "context lab set") {
		t.Fatalf("set-context: exit %d %s %s", code, out, errOut)
	}
	if _, errOut, code := run(t, empty, "", "config", "use-context", "nope"); code == 0 || !strings.Contains(errOut, `no context "nope"`) {
		t.Errorf("use-context of an unknown context: exit %d %s", code, errOut)
	}
	if _, errOut, code := run(t, empty, "", "config", "use-context", "lab"); code != 0 {
		t.Fatalf("use-context: %s", errOut)
	}
	if _, errOut, code := run(t, empty, "", "get", "pods"); code != 0 {
		t.Fatalf("get pods through the context: exit %d: %s", code, errOut)
	}
	out, _, _ := run(t, empty, "", "config", "get-contexts")
	if !strings.Contains(out, "*  ") || !strings.Contains(out, "lab") || !strings.Contains(out, "client.creds") {
		t.Errorf("get-contexts:\n%s", out)
	}
}

// TestApplyRefusesWhatPodvisorOwns: a pod manifest that sets what podvisor
// assigns (metadata.uid) or reserves (podvisor-templates, the namespace of
// the provisioner's pod VM templates) is refused before anything is
// published, naming the field and why.
func TestApplyRefusesWhatPodvisorOwns(t *testing.T) {
	_, dir := upForTest(t, "none")
	for _, tt := range []struct {
		name, metadata        string
		wantField, wantReason string
	}{
		{"client uid", "{name: web, uid: 5f0c6a1e-8d3b-4c2a-9e7f-1b2c3d4e5f60}",
			"metadata.uid", "podvisor assigns pod uids"},
		{"templates namespace", "{name: web, namespace: podvisor-templates}",
			"metadata.namespace", "reserved for the provisioner's pod VM templates"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := "apiVersion: v1\nkind: Pod\nmetadata: " + tt.metadata + "\nspec: {containers: [{name: a, image: r/x:1}]}\n"
			_, errOut, code := run(t, dir, pod, "apply", "-f", "-")
			if code == 0 || !strings.Contains(errOut, tt.wantField) || !strings.Contains(errOut, tt.wantReason) {
				t.Errorf("apply with %s: exit %d: %s", tt.metadata, code, errOut)
			}
		})
	}
}

// checkRegistryTLS: the registry answers HTTPS verified against the CA the
// env file names, and refuses plain HTTP.
func checkRegistryTLS(t *testing.T, registry, caFile string) {
	t.Helper()
	pool, err := pki.SystemPoolWith(caFile)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + registry + "/v2/")
	if err != nil {
		t.Fatalf("registry over HTTPS with PODVISOR_REGISTRY_CA: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("registry over HTTPS: %s", resp.Status)
	}
	if resp, err := c.Get("http://" + registry + "/v2/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the registry answers plain HTTP")
		}
	}
}

// get's help names every kind get knows (the list is made from them).
func TestGetHelpNamesEveryKind(t *testing.T) {
	out, errOut, code := run(t, t.TempDir(), "", "get", "--help")
	if code != 0 {
		t.Fatalf("get --help: exit %d: %s", code, errOut)
	}
	for _, r := range resources {
		if !strings.Contains(out, r.names[0]) {
			t.Errorf("get --help does not name %s:\n%s", r.names[0], out)
		}
	}
	for _, kind := range []string{"vms", "vmclasses", "vmimages", "drains"} {
		if !strings.Contains(out, kind) {
			t.Errorf("get --help does not name %s", kind)
		}
	}
}

// The help of the commands that handle native VMs as well as pods says so:
// apply names every kind it takes, and describe, migrate, drain and sim
// what they do with VMs.
func TestHelpNamesNativeVMs(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"apply", "--help"}, []string{"Pod", "Network", "NetworkService", "Migration", "GuestCluster",
			"VirtualMachine ", "VirtualMachineClass", "VirtualMachineImage", "admission of pods and VMs"}},
		{[]string{"describe", "--help"}, []string{"native VM", "pod VM", "namespace of the pod or VM"}},
		{[]string{"migrate", "--help"}, []string{"migrate vm publishes vm.migrate.requested for a native VM", "datastores", "of a pod or a VM"}},
		{[]string{"drain", "--help"}, []string{"moves each of its native\nVMs", "made\nagain on another host from its disks", "pods and VMs"}},
		{[]string{"sim", "--help"}, []string{"native VMs are made again elsewhere", "no new\n", "pods or VMs are placed there"}},
		{[]string{"delete", "--help"}, []string{"vmclass or vmimage still used by VMs", "exits 1 with the reason"}},
		{[]string{"topology", "--help"}, []string{"admin", "--nats-creds", "admin.creds"}},
	} {
		out, errOut, code := run(t, t.TempDir(), "", tt.args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tt.args, code, errOut)
		}
		for _, want := range tt.want {
			if !strings.Contains(out, want) {
				t.Errorf("podvisor %s lacks %q:\n%s", strings.Join(tt.args, " "), want, out)
			}
		}
	}
}

// delete -f deletes what a manifest names, each object in its namespace,
// as kubectl does; a manifest of something that cannot be deleted is
// refused before anything is deleted. A VM class or image still used by a
// VM is refused, and delete says so, exit 1, naming the VM; once the VM is
// gone, delete says the class is deleted.
func TestDeleteWithManifests(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	t.Setenv("PODVISOR_NATS_URL", "")
	pods := "apiVersion: v1\nkind: Pod\nmetadata: {name: one}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n" +
		"---\napiVersion: v1\nkind: Pod\nmetadata: {name: two, namespace: team-b}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
	if _, errOut, code := run(t, dir, pods, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %s", errOut)
	}
	out, errOut, code := run(t, dir, pods, "delete", "-f", "-", "--dry-run")
	if code != 0 || !strings.Contains(out, "pod default/one deletion requested (dry run)") || !strings.Contains(out, "pod team-b/two deletion requested (dry run)") {
		t.Fatalf("delete -f --dry-run: exit %d\n%s%s", code, out, errOut)
	}
	migration := "apiVersion: podvisor.io/v1alpha1\nkind: Migration\nmetadata: {name: m1}\nspec: {pod: one}\n"
	if _, errOut, code := run(t, dir, pods+"---\n"+migration, "delete", "-f", "-"); code != 2 || !strings.Contains(errOut, "Migration cannot be deleted") {
		t.Errorf("delete -f with a Migration: exit %d, %s; want refused", code, errOut)
	}
	if out, _, _ := run(t, dir, "", "get", "pods", "-A"); !strings.Contains(out, "one") || !strings.Contains(out, "two") {
		t.Errorf("a refused delete -f deleted something:\n%s", out)
	}
	if out, errOut, code := run(t, dir, pods, "delete", "-f", "-"); code != 0 || strings.Count(out, "deletion requested") != 2 {
		t.Fatalf("delete -f: exit %d\n%s%s", code, out, errOut)
	}
	eventually(t, "both pods gone", func() bool {
		out, _, _ := run(t, dir, "", "get", "pods", "-A")
		return !strings.Contains(out, "one") && !strings.Contains(out, "two")
	})

	// The provisioner admits a VM without placing it (no scheduler here):
	// its record is enough to hold its class and image.
	vm := "apiVersion: podvisor.io/v1alpha1\nkind: VirtualMachine\nmetadata: {name: vm1, namespace: team-a}\nspec: {className: small, imageName: vmos}\n"
	if out, errOut, code := run(t, dir, "apiVersion: podvisor.io/v1alpha1\nkind: VirtualMachineClass\nmetadata: {name: small}\nspec: {cpus: 1, memory: 512Mi}\n"+
		"---\napiVersion: podvisor.io/v1alpha1\nkind: VirtualMachineImage\nmetadata: {name: vmos}\nspec: {oci: registry.local/podvisor/vmos:1.0}\n---\n"+vm,
		"apply", "-f", "-"); code != 0 || !strings.Contains(out, "vm/team-a/vm1 accepted") {
		t.Fatalf("apply class, image and VM: exit %d\n%s%s", code, out, errOut)
	}
	for _, kind := range []string{"vmclass", "vmimage"} {
		name := map[string]string{"vmclass": "small", "vmimage": "vmos"}[kind]
		out, errOut, code := run(t, dir, "", "delete", kind, name)
		if code != 1 || !strings.Contains(errOut, "deletion of "+kind+" "+name+" refused: InUse") || !strings.Contains(errOut, "team-a/vm1") {
			t.Errorf("delete %s %s while vm1 uses it: exit %d, stdout %q, stderr %q; want exit 1, refused, naming team-a/vm1", kind, name, code, out, errOut)
		}
	}
	// A manifest naming the class before the VM that uses it: the class
	// is refused (vm1 still uses it), the VM's deletion is asked for all
	// the same, and the command fails at the end.
	classFirst := "apiVersion: podvisor.io/v1alpha1\nkind: VirtualMachineClass\nmetadata: {name: small}\nspec: {cpus: 1, memory: 512Mi}\n---\n" + vm
	out, errOut, code = run(t, dir, classFirst, "delete", "-f", "-")
	if code != 1 || !strings.Contains(out, "vm team-a/vm1 deletion requested") || !strings.Contains(errOut, "vmclass small refused: InUse") {
		t.Fatalf("delete -f of the class and its VM: exit %d, stdout %q, stderr %q; want the class refused, the VM's deletion requested, exit 1", code, out, errOut)
	}
	eventually(t, "vm1 gone", func() bool {
		out, _, _ := run(t, dir, "", "get", "vms", "-n", "team-a", "-o", "name")
		return strings.TrimSpace(out) == ""
	})
	if out, errOut, code := run(t, dir, "", "delete", "vmclass", "small"); code != 0 || !strings.Contains(out, "vmclass small deleted") {
		t.Errorf("delete vmclass small once unused: exit %d, stdout %q, stderr %q; want it deleted", code, out, errOut)
	}
	if out, _, _ := run(t, dir, "", "get", "vmclasses"); strings.Contains(out, "small") {
		t.Errorf("get vmclasses after the deletion:\n%s", out)
	}
}
