package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
)

// TestPodNetworkingOnUp is issue 16's acceptance as a new user tries it on
// `podvisor up --guests on`, through the CLI only: pod b serves `busybox
// httpd` on network default; pod a on default fetches it by address and by
// DNS name <pod>.<namespace>.pod.podvisor.local (a NetworkService of type
// dns); pod c on another network can neither reach it (the connection
// fails within 5 s) nor resolve its name; when b goes, so does its name.
func TestPodNetworkingOnUp(t *testing.T) {
	sys, dir := guestsUp(t, "simulated guests and their network segments need root", allinone.Config{HostsPerCluster: 2})
	ctx := t.Context()
	image := sys.Endpoints.Registry + "/podvisor/busybox:1.0"
	pod := func(name, network, cmd string) string {
		ann := ""
		if network != "" {
			ann = "  annotations: {podvisor.io/networks: " + network + "}\n"
		}
		return "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n" + ann +
			"spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: " + image + "\n    command: [sh, -c, '" + cmd + "']\n"
	}
	manifest := `apiVersion: podvisor.io/v1alpha1
kind: Network
metadata: {name: other}
spec: {vlan: 0, cidr: 10.77.0.0/24, gateway: 10.77.0.1}
---
apiVersion: podvisor.io/v1alpha1
kind: NetworkService
metadata: {name: pod-dns}
spec: {type: dns, networks: [default, other]}
`
	mustRun(t, dir, manifest, "apply", "-f", "-")
	var nets string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("networks:\n%s", nets)
		}
	})
	eventuallyWithin(t, 30*time.Second, "networks default and other ready", func() bool {
		nets, _, _ = run(t, dir, "", "get", "networks")
		return strings.Count(nets, "Ready") == 2
	})
	// The service's profiles exist before the pods attach (a pod learns
	// its nameserver when it attaches).
	b, err := sys.Dial(ctx, "admin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	kv, err := b.KV(ctx, events.BucketNetServices)
	if err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 30*time.Second, "profiles of pod-dns", func() bool {
		e, err := kv.Get(ctx, "pod-dns")
		var r events.NetworkServiceRecord
		return err == nil && json.Unmarshal(e.Value(), &r) == nil && len(r.Profiles) == 2
	})

	mustRun(t, dir, pod("b", "", "mkdir -p /www && echo hello from b > /www/index.html && exec httpd -f -p 8080 -h /www")+
		pod("a", "", "exec sleep 3600")+pod("c", "other", "exec sleep 3600"), "apply", "-f", "-")
	ipOf := map[string]string{}
	eventuallyWithin(t, 120*time.Second, "pods a, b and c running", func() bool {
		pods, _, code := run(t, dir, "", "get", "pods", "-o", "json")
		var list struct {
			Items []struct {
				Metadata struct{ Name string }
				Status   struct {
					Phase string
					PodIP string `json:"podIP"`
				}
			}
		}
		if code != 0 || json.Unmarshal([]byte(pods), &list) != nil {
			return false
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == "Running" {
				running++
				ipOf[p.Metadata.Name] = p.Status.PodIP
			}
		}
		return running == 3
	})

	fetch := func(from, url string) (string, string, int) {
		return run(t, dir, "", "exec", from, "-c", "app", "--", "timeout", "5", "wget", "-q", "-O", "-", url)
	}
	for _, url := range []string{"http://" + ipOf["b"] + ":8080/", "http://b.default.pod.podvisor.local:8080/", "http://b:8080/"} {
		var out, errOut string
		var code int
		eventuallyWithin(t, 30*time.Second, "a fetching "+url, func() bool {
			out, errOut, code = fetch("a", url)
			return code == 0 && out == "hello from b\n"
		})
		if out != "hello from b\n" {
			t.Fatalf("a fetching %s: exit %d, %q, %q", url, code, out, errOut)
		}
	}

	// Isolation: c on network other reaches nothing of default.
	start := time.Now()
	out, errOut, code := fetch("c", "http://"+ipOf["b"]+":8080/")
	if code == 0 || code != 143 && !strings.Contains(errOut, "can't connect to remote host") {
		t.Errorf("c fetching b by address: exit %d, %q, %q; want the connection to fail", code, out, errOut)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("c's fetch took %v to fail, want about 5 s at most", took)
	}
	if out, _, code := run(t, dir, "", "exec", "c", "-c", "app", "--", "nslookup", "b.default.pod.podvisor.local"); code == 0 || !strings.Contains(out, "NXDOMAIN") {
		t.Errorf("c resolving b: exit %d, %q; want NXDOMAIN from its own network's DNS", code, out)
	}

	// Records follow deletions.
	mustRun(t, dir, "", "delete", "pod", "b")
	eventuallyWithin(t, 60*time.Second, "b's name gone", func() bool {
		out, _, code := run(t, dir, "", "exec", "a", "-c", "app", "--", "nslookup", "b.default.pod.podvisor.local")
		return code != 0 && strings.Contains(out, "NXDOMAIN")
	})
}
