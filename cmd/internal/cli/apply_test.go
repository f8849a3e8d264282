package cli

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/cmd/internal/serve"
)

func podManifest(name, app, registry string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, labels: {app: %s}}\nspec: {containers: [{name: c, image: %s/podvisor/base:1.0}]}\n", name, app, registry)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustRun(t *testing.T, dir, stdin string, args ...string) string {
	t.Helper()
	out, errOut, code := run(t, dir, stdin, args...)
	if code != 0 {
		t.Fatalf("podvisor %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// The kubectl habits of issue 21, as a user types them: files and
// directories, round trips of exported objects, selectors, dry runs,
// describe, cordon.
func TestKubectlHabits(t *testing.T) {
	_, dir := upForTest(t, "all")
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	reg := vars["PODVISOR_REGISTRY"]
	files := t.TempDir()
	writeFile(t, filepath.Join(files, "a.yaml"), podManifest("a1", "web", reg))
	writeFile(t, filepath.Join(files, "dir", "b.yaml"), podManifest("b1", "web", reg))
	writeFile(t, filepath.Join(files, "dir", "c.json"), `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"c1","labels":{"app":"db"}},"spec":{"containers":[{"name":"c","image":"`+reg+`/podvisor/base:1.0"}]}}`)
	writeFile(t, filepath.Join(files, "dir", "README.txt"), "not a manifest")
	writeFile(t, filepath.Join(files, "dir", "sub", "d.yaml"), podManifest("d1", "other", reg))

	// Repeated -f and a directory: both apply (the subdirectory only with -R).
	out := mustRun(t, dir, "", "apply", "-f", filepath.Join(files, "a.yaml"), "-f", filepath.Join(files, "dir"))
	for _, want := range []string{"pod/default/a1 accepted", "pod/default/b1 accepted", "pod/default/c1 accepted"} {
		if !strings.Contains(out, want) {
			t.Errorf("apply -f a.yaml -f dir/: want %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "d1") {
		t.Errorf("apply -f dir/ without -R read the subdirectory:\n%s", out)
	}
	out = mustRun(t, dir, "", "apply", "-R", "-f", filepath.Join(files, "dir"))
	if !strings.Contains(out, "pod/default/d1 accepted") || !strings.Contains(out, "pod/default/b1 unchanged") {
		t.Errorf("apply -R -f dir/:\n%s", out)
	}
	// `up` runs no guests: a pod's VM powered on (VMReady) is as far as it goes.
	eventually(t, "a1's VM running", func() bool {
		out, _, _ := run(t, dir, "", "get", "pod", "a1", "-o", `jsonpath={.status.conditions[?(@.type=="VMReady")].status}`)
		return out == "True"
	})

	// An exported pod, and an exported List, apply as unchanged.
	exported := mustRun(t, dir, "", "get", "pod", "a1", "-o", "yaml")
	if !strings.Contains(exported, "nodeName: esx-") {
		t.Fatalf("exported pod lacks its host:\n%s", exported)
	}
	if out := mustRun(t, dir, exported, "apply", "-f", "-"); strings.TrimSpace(out) != "pod/default/a1 unchanged" {
		t.Errorf("get pod a1 -o yaml | apply -f -: %q, want unchanged", out)
	}
	list := mustRun(t, dir, "", "get", "pods", "-o", "yaml")
	if !strings.Contains(list, "kind: List") {
		t.Fatalf("get pods -o yaml is not a List:\n%s", list)
	}
	out = mustRun(t, dir, list, "apply", "-f", "-")
	if strings.Count(out, "unchanged") != 4 {
		t.Errorf("get pods -o yaml | apply -f -: want 4 unchanged:\n%s", out)
	}
	// A nodeName that is not the pod's host is refused as any user-set one.
	moved := strings.Replace(exported, "nodeName: esx-", "nodeName: other-esx-", 1)
	if _, errOut, code := run(t, dir, moved, "apply", "-f", "-"); code == 0 || !strings.Contains(errOut, "spec.nodeName") {
		t.Errorf("apply with a foreign nodeName: exit %d, %s", code, errOut)
	}
	// From an http URL.
	srv := httptest.NewServer(http.FileServer(http.Dir(files)))
	defer srv.Close()
	if out := mustRun(t, dir, "", "apply", "-f", srv.URL+"/a.yaml"); !strings.Contains(out, "pod/default/a1 unchanged") {
		t.Errorf("apply -f URL: %s", out)
	}
	if _, errOut, code := run(t, dir, "", "apply", "-f", srv.URL+"/missing.yaml"); code == 0 || !strings.Contains(errOut, "404") {
		t.Errorf("apply -f of a missing URL: exit %d, %s", code, errOut)
	}

	// Selectors and labels.
	if out := mustRun(t, dir, "", "get", "pods", "-l", "app=web", "-o", "name"); out != "pod/a1\npod/b1\n" {
		t.Errorf("get pods -l app=web -o name = %q, want pod/a1 and pod/b1", out)
	}
	if out := mustRun(t, dir, "", "get", "pods", "--show-labels"); !strings.Contains(out, "LABELS") || !strings.Contains(out, "app=db") {
		t.Errorf("get pods --show-labels:\n%s", out)
	}
	if out := mustRun(t, dir, "", "get", "pods", "-o", "wide"); !strings.Contains(out, "UID") || !strings.Contains(out, "pv-") {
		t.Errorf("get pods -o wide has no wide columns:\n%s", out)
	}

	// Dry runs create and delete nothing.
	writeFile(t, filepath.Join(files, "e.yaml"), podManifest("e1", "web", reg))
	if out := mustRun(t, dir, "", "apply", "--dry-run=client", "-f", filepath.Join(files, "e.yaml")); !strings.Contains(out, "pod/default/e1 valid (dry run)") {
		t.Errorf("apply --dry-run=client: %s", out)
	}
	if out := mustRun(t, dir, "", "apply", "--dry-run=server", "-f", filepath.Join(files, "e.yaml"), "-f", filepath.Join(files, "a.yaml")); !strings.Contains(out, "e1 requested (server dry run)") || !strings.Contains(out, "a1 unchanged (server dry run)") {
		t.Errorf("apply --dry-run=server: %s", out)
	}
	out = mustRun(t, dir, "", "delete", "pod", "-l", "app=web", "--dry-run=server")
	if strings.Count(out, "deletion requested (server dry run)") != 2 {
		t.Errorf("delete -l app=web --dry-run=server:\n%s", out)
	}
	if out := mustRun(t, dir, "", "events", "-o", "json", "--type", "pod.delete.requested"); out != "" {
		t.Errorf("a dry run published deletions:\n%s", out)
	}
	if _, _, code := run(t, dir, "", "get", "pod", "e1"); code != 1 {
		t.Errorf("get pod e1 after a dry run: exit %d, want 1 (not found)", code)
	}

	// describe shows the record and the pod's events.
	out = mustRun(t, dir, "", "describe", "pod", "a1")
	for _, want := range []string{"Name:", "a1", "Phase:", "Starting", "Events:", "pod.requested", "pod.accepted", "pod.vm.ready", "podvisor/provisioner"} {
		if !strings.Contains(out, want) {
			t.Errorf("describe pod a1 lacks %q:\n%s", want, out)
		}
	}
	host := mustRun(t, dir, "", "get", "pod", "a1", "-o", "jsonpath={.spec.nodeName}")
	out = mustRun(t, dir, "", "describe", "host", host)
	if !strings.Contains(out, "default/a1") || !strings.Contains(out, "Events:") {
		t.Errorf("describe host %s:\n%s", host, out)
	}
	out = mustRun(t, dir, "", "describe", "vm", "a1")
	if !strings.Contains(out, "poweredOn") || !strings.Contains(out, "guestinfo.podvisor.") || !strings.Contains(out, "Host:") {
		t.Errorf("describe vm a1:\n%s", out)
	}

	// cordon and uncordon, seen in the scheduler's host record as soon as
	// the command says it is done.
	mustRun(t, dir, "", "cordon", "host", host)
	if out, _, _ := run(t, dir, "", "get", "host", host, "-o", "jsonpath={.cordoned}"); out != "true" {
		t.Errorf("get host %s right after cordon: cordoned = %q", host, out)
	}
	mustRun(t, dir, "", "uncordon", "host", host)
	if out, _, _ := run(t, dir, "", "get", "host", host, "-o", "jsonpath={.cordoned}"); out != "" && out != "false" {
		t.Errorf("get host %s right after uncordon: cordoned = %q", host, out)
	}

	if out := mustRun(t, dir, "", "version"); !strings.HasPrefix(out, "podvisor ") || !strings.Contains(out, "go1.") {
		t.Errorf("version: %q", out)
	}
	// Completion knows the pods' names.
	out = mustRun(t, dir, "", "__complete", "get", "pod", "")
	if !strings.Contains(out, "a1\n") || !strings.Contains(out, "b1\n") {
		t.Errorf("completion of get pod <TAB>:\n%s", out)
	}
}

// apply is all or nothing: every document of every -f is checked first, each
// bad one is named with its source and document, and the last line says
// that nothing was applied, in every --dry-run mode too.
func TestApplyNamesEveryBadDocumentAndAppliesNothing(t *testing.T) {
	_, dir := upForTest(t, "none")
	files := t.TempDir()
	a, b, c := filepath.Join(files, "a.yaml"), filepath.Join(files, "b.yaml"), filepath.Join(files, "c.yaml")
	writeFile(t, a, podManifest("fine", "web", "registry.local"))
	crash := "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec: {containers: [{name: c, image: registry.local/a:1, resources: {requests: {memory: 12Gx}}}]}\n"
	writeFile(t, b, crash)
	writeFile(t, c, podManifest("also-fine", "web", "registry.local")+"---\n"+crash+
		"---\napiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: wide}\nspec: {cidr: 10.50.0.0/33}\n")

	for _, tt := range []struct {
		name  string
		files []string
		want  []string // the error lines, in order
	}{
		{"multi-file", []string{a, b}, []string{
			"error: " + b + ": document 1 (Pod crash): spec.containers[0].resources.requests.memory",
			"error: nothing was applied",
		}},
		{"multi-document", []string{c}, []string{
			"error: " + c + ": document 2 (Pod crash): spec.containers[0].resources.requests.memory",
			"error: " + c + ": document 3 (Network wide): spec.cidr",
			"error: nothing was applied",
		}},
	} {
		for _, mode := range []string{"none", "client", "server"} {
			t.Run(tt.name+"/dry-run="+mode, func(t *testing.T) {
				args := []string{"apply", "--dry-run=" + mode}
				for _, f := range tt.files {
					args = append(args, "-f", f)
				}
				out, errOut, code := run(t, dir, "", args...)
				lines := strings.Split(strings.TrimSpace(errOut), "\n")
				if code != 1 || out != "" || len(lines) != len(tt.want) {
					t.Fatalf("exit %d, stdout %q, stderr:\n%s\nwant exit 1, no output and %d error lines", code, out, errOut, len(tt.want))
				}
				for i, w := range tt.want {
					if !strings.HasPrefix(lines[i], w) {
						t.Errorf("error line %d = %q, want it to start with %q", i+1, lines[i], w)
					}
				}
			})
		}
	}
	// up publishes events of its own (the default network); none is apply's.
	if out := mustRun(t, dir, "", "events", "-o", "json"); strings.Contains(out, `"source":"`+CLISource+`"`) {
		t.Errorf("a refused apply published events:\n%s", out)
	}
}
