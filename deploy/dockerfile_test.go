package deploy

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// No Docker engine is needed to hold the Dockerfile to what the manifests
// assume: static binaries built from the workspace (the podvisor CLI, and
// podvisord, which the services' manifests run), an unprivileged user, the
// CLI as entrypoint, and a dev stage Tilt can live-update.
func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t)
	root := repoRoot(t)

	builder, ok := df.Stage("builder")
	if !ok {
		t.Fatal("no stage named builder")
	}
	if !strings.HasPrefix(builder.Base, "golang:") {
		t.Errorf("builder starts from %s, want a golang image", builder.Base)
	}
	if want := "golang:" + goWorkVersion(t); builder.Base != want {
		t.Errorf("builder image %s, want %s (the go version of go.work)", builder.Base, want)
	}
	var built bool
	for _, run := range builder.All("RUN") {
		if strings.Contains(run.Args, "go build") {
			built = true
			for _, want := range []string{"CGO_ENABLED=0", "./cmd/podvisor ", "./cmd/podvisord", "-o /out/"} {
				if !strings.Contains(run.Args, want) {
					t.Errorf("builder's go build lacks %q: %s", want, run.Args)
				}
			}
		}
	}
	if !built {
		t.Error("builder runs no go build")
	}
	var copiesWorkspace bool
	for _, cp := range builder.All("COPY") {
		copiesWorkspace = copiesWorkspace || strings.HasPrefix(cp.Args, ". ")
	}
	if !copiesWorkspace {
		t.Error("builder does not copy the workspace (go.work and every module)")
	}

	final := df.Final()
	if final.Name == "dev" || !(strings.HasPrefix(final.Base, "gcr.io/distroless/static") || final.Base == "scratch") {
		t.Errorf("final stage %q from %s, want distroless/static or scratch", final.Name, final.Base)
	}
	cp, _ := final.Last("COPY")
	if from, _ := cp.Flag("from"); from != "builder" || cp.Args != "/out/podvisor /out/podvisord /" {
		t.Errorf("final stage COPY = %+v, want /podvisor and /podvisord from builder", cp)
	}

	for _, st := range []string{"dev", ""} {
		stage := final
		if st != "" {
			if stage, ok = df.Stage(st); !ok {
				t.Fatalf("no stage %s (Tilt builds it)", st)
			}
		}
		user, ok := stage.Last("USER")
		if !ok || (user.Args != "65532" && !strings.HasPrefix(user.Args, "65532:")) {
			t.Errorf("stage %q: USER %q, want 65532", stage.Name, user.Args)
		}
		ep, _ := stage.Last("ENTRYPOINT")
		args, exec := ep.Exec()
		if !exec || !slices.Contains(args, "/podvisor") {
			t.Errorf("stage %q: ENTRYPOINT %s, want the exec form running /podvisor", stage.Name, ep.Args)
		}
		if _, cmd := stage.Last("CMD"); cmd {
			t.Errorf("stage %q has a CMD: the manifests pass the subcommand as args", stage.Name)
		}
	}

	// What the dev stage copies from the context exists in the repository or
	// is built by the Tiltfile; what it runs is executable.
	dev, _ := df.Stage("dev")
	defaults := stageArgs(dev)
	for _, c := range dev.All("COPY") {
		if _, fromStage := c.Flag("from"); fromStage {
			continue
		}
		fields := strings.Fields(os.Expand(c.Args, func(k string) string { return defaults[k] }))
		for _, src := range fields[:len(fields)-1] {
			if strings.HasPrefix(src, "bin/") {
				continue // a local_resource of the Tiltfile builds it
			}
			if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("dev stage copies %s: %v", src, err)
			}
		}
	}
	ep, _ := dev.Last("ENTRYPOINT")
	args, _ := ep.Exec()
	for _, a := range args {
		if strings.HasPrefix(a, "/tilt/") {
			info, err := os.Stat(filepath.Join(root, a))
			if err != nil || info.Mode()&0o111 == 0 {
				t.Errorf("dev entrypoint %s is missing or not executable (%v)", a, err)
			}
		}
	}
}

func goWorkVersion(t *testing.T) string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	re := regexp.MustCompile(`^go (\d+\.\d+)`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			return m[1]
		}
	}
	t.Fatal("go.work has no go directive")
	return ""
}

// The build context must keep what the build needs: go.work and the module
// sources. The ignore file may keep out anything else.
func TestDockerignoreKeepsTheWorkspace(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("docker", "Dockerfile.dockerignore"))
	if err != nil {
		t.Fatalf("deploy/docker/Dockerfile.dockerignore: %v", err)
	}
	var patterns []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, line)
		}
	}
	if !slices.Contains(patterns, ".git") {
		t.Error(".git is sent with the build context")
	}
	keep := []string{"go.work", "go.work.sum", "cmd/podvisor/main.go", "events/go.mod", "shared/go.mod", "services/scheduler/go.mod", "deploy/go.mod", "e2e/go.mod", "tilt/live/start.sh", "bin/tilt/podvisor"}
	for _, path := range keep {
		if ignored(patterns, path) {
			t.Errorf("%s is ignored, but the build needs it", path)
		}
	}
	for _, path := range []string{".git/config", "bin/podvisor", ".podvisor/env", "deploy/k8s/base/kustomization.yaml"} {
		if !ignored(patterns, path) {
			t.Errorf("%s is sent with the build context", path)
		}
	}
}

// ignored applies .dockerignore patterns the way BuildKit does for these
// simple cases: the last matching pattern wins, `!` re-includes, a pattern
// matching a directory covers what is under it.
func ignored(patterns []string, path string) bool {
	result := false
	for _, p := range patterns {
		negate := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(strings.TrimPrefix(p, "!"), "/")
		match := false
		for prefix := path; prefix != "."; prefix = filepath.Dir(prefix) {
			if ok, _ := filepath.Match(p, prefix); ok {
				match = true
				break
			}
		}
		if match {
			result = !negate
		}
	}
	return result
}
