package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

// TestUpGuestsRunImageConfigAndSurviveHostLoss is the data plane as a user
// meets it on `podvisor up --guests on`, every service in the loop:
//
//   - a pod whose containers give no command runs its image's Entrypoint
//     and Cmd, with the image's environment under the manifest's, the
//     image's working directory and user; a container giving only args
//     keeps the Entrypoint (Kubernetes' rules), as `podvisor logs` shows;
//   - `podvisor sim host fail` on the pod's host: the scheduler sees the
//     host lost, migration evicts the pod, and its containers run again on
//     the other host (a new pod VM, a new guest), Running only once they do.
func TestUpGuestsRunImageConfigAndSurviveHostLoss(t *testing.T) {
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: 2})

	// An image that says how to run: the seeded busybox with a config.
	ref := pushWithConfig(t, sys.RegistryOptions(), sys.Endpoints.Registry+"/"+ociregistry.BusyboxRepoTag, sys.Endpoints.Registry+"/podvisor/entry:1.0", v1.Config{
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{`echo "cmd $GREETING $KEEP $(pwd) $(id -u)"; exec sleep 3600`},
		Env:        []string{"PATH=/bin", "GREETING=image", "KEEP=kept"},
		WorkingDir: "/tmp",
		User:       "nobody",
	})
	manifest := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(manifest, []byte(`apiVersion: v1
kind: Pod
metadata:
  name: entry
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: img
    image: `+ref+`
    env:
    - name: GREETING
      value: manifest
  - name: args
    image: `+ref+`
    args: ['echo "args $GREETING $(pwd)"; exec sleep 3600']
    workingDir: /
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run(t, dir, "", "apply", "-f", manifest); code != 0 {
		t.Fatalf("apply: exit %d: %s%s", code, out, errOut)
	}

	first := waitRunning(t, dir, "entry", "", 90*time.Second)
	t.Logf("running on %s", first.Spec.NodeName)
	wantLogs := map[string]string{"img": "cmd manifest kept /tmp 65534\n", "args": "args image /\n"}
	checkLogs := func() {
		t.Helper()
		for c, want := range wantLogs {
			eventuallyWithin(t, 15*time.Second, "podvisor logs entry -c "+c+" to print "+want, func() bool {
				out, _, _ := run(t, dir, "", "logs", "entry", "-c", c)
				return out == want
			})
		}
	}
	checkLogs()

	// The host fails: its guests freeze, and the pod comes up elsewhere.
	if out, errOut, code := run(t, dir, "", "sim", "host", "fail", first.Spec.NodeName); code != 0 {
		t.Fatalf("sim host fail: exit %d: %s%s", code, out, errOut)
	}
	t.Cleanup(func() { run(t, dir, "", "sim", "host", "recover", first.Spec.NodeName) })
	failed := time.Now()
	second := waitRunning(t, dir, "entry", first.Spec.NodeName, 120*time.Second)
	t.Logf("host fail to containers running on %s: %s", second.Spec.NodeName, time.Since(failed).Round(time.Millisecond))
	checkLogs()
	// The new pod VM's disk 0 came formatted, from the datastore's
	// template (built since the first pod VM was created).
	checkDiskZeroFromTemplate(t, sys, dir)
}

// pushWithConfig copies the image at from to to with cfg as its config and
// returns to.
func pushWithConfig(t *testing.T, reg []remote.Option, from, to string, cfg v1.Config) string {
	t.Helper()
	src, err := name.ParseReference(from)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(src, reg...)
	if err != nil {
		t.Fatalf("read %s: %v", from, err)
	}
	if img, err = mutate.Config(img, cfg); err != nil {
		t.Fatal(err)
	}
	dst, err := name.ParseReference(to)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, img, reg...); err != nil {
		t.Fatalf("push %s: %v", to, err)
	}
	return to
}

// waitRunning polls `podvisor get pod NAME -o json` until the pod is
// Running with every container running, on a host other than notOn.
func waitRunning(t *testing.T, stateDir, pod, notOn string, within time.Duration) corev1.Pod {
	t.Helper()
	var p corev1.Pod
	var last string
	deadline := time.Now().Add(within)
	for {
		out, errOut, code := run(t, stateDir, "", "get", "pod", pod, "-o", "json")
		last = out + errOut
		if code == 0 && json.Unmarshal([]byte(out), &p) == nil && p.Status.Phase == corev1.PodRunning &&
			p.Spec.NodeName != "" && p.Spec.NodeName != notOn && allRunning(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not running (away from %q) within %s; last:\n%s", pod, notOn, within, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func allRunning(p corev1.Pod) bool {
	if len(p.Status.ContainerStatuses) != len(p.Spec.Containers) {
		return false
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running == nil {
			return false
		}
	}
	return true
}
