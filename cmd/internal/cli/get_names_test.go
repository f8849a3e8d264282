package cli

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
)

func testPodRow(ns, name string) record {
	return &podRow{events.PodRecord{Namespace: ns, Name: name, Phase: events.PodPhaseRunning,
		Pod: corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}}}
}

// get with several names prints them in the order given, and says which
// were not found.
func TestGetFoundKeepsTheNamesOrder(t *testing.T) {
	res, _ := lookupResource("pods")
	o := &getOptions{namespace: "default", names: []string{"c", "x", "a", "y"}}
	recs, err := o.found(res, []record{testPodRow("default", "a"), testPodRow("default", "c")})
	var got []string
	for _, r := range recs {
		got = append(got, r.Name())
	}
	if strings.Join(got, " ") != "c a" {
		t.Errorf("order = %v, want c a", got)
	}
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || err.Error() != "pod \"default/x\" not found\npod \"default/y\" not found" {
		t.Fatalf("missing names: %v", err)
	}
	// While watching, a name may yet appear.
	o.watch = true
	if _, err := o.found(res, nil); err != nil {
		t.Errorf("watch of missing names: %v", err)
	}
}

// `get KIND NAME...` works for every kind: the named objects, in the order
// given, and an error line for each one missing, exit 1.
func TestGetSeveralNames(t *testing.T) {
	_, dir := upForTest(t, "provisioner,netconfig")
	waitDefaultNetworkReady(t, dir)
	for _, name := range []string{"a", "b", "c"} {
		pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name + "}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
		if _, errOut, code := run(t, dir, pod, "apply", "-f", "-"); code != 0 {
			t.Fatalf("apply %s: %s", name, errOut)
		}
	}
	eventually(t, "the three pods", func() bool {
		out, _, _ := run(t, dir, "", "get", "pods", "--no-headers")
		return strings.Count(out, "\n") == 3
	})
	names := func(out string) (names []string) {
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) > 1 {
				names = append(names, f[1])
			}
		}
		return names
	}
	out, errOut, code := run(t, dir, "", "get", "pods", "c", "a", "--no-headers")
	if code != 0 || strings.Join(names(out), " ") != "c a" {
		t.Errorf("get pods c a: exit %d, stderr %q:\n%s", code, errOut, out)
	}
	out, errOut, code = run(t, dir, "", "get", "pod", "b", "x", "a", "y")
	if code != 1 || strings.Join(names(out), " ") != "NAME b a" {
		t.Errorf("get pod b x a y: exit %d, want 1, and b then a:\n%s", code, out)
	}
	if errOut != "error: pod \"default/x\" not found\nerror: pod \"default/y\" not found\n" {
		t.Errorf("get pod b x a y: stderr %q, want a line per missing pod", errOut)
	}
	// Several names print a List in the structured formats.
	if out := mustRun(t, dir, "", "get", "pods", "a", "b", "-o", "jsonpath={.items[*].metadata.name}"); out != "a b" {
		t.Errorf("get pods a b -o jsonpath: %q", out)
	}
	// Another kind: networks.
	out, errOut, code = run(t, dir, "", "get", "networks", "nope", "default")
	if code != 1 || !strings.Contains(out, "default") || errOut != "error: network \"nope\" not found\n" {
		t.Errorf("get networks nope default: exit %d, stderr %q:\n%s", code, errOut, out)
	}
}
