package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/deploy/internal/dockerfile"
	"github.com/podvisor/podvisor/deploy/internal/manifests"
	"github.com/podvisor/podvisor/deploy/internal/tiltfile"
)

// modules are the Go module folders of the five services.
var modules = map[string]string{
	"scheduler":   "services/scheduler",
	"provisioner": "services/provisioner",
	"imagecache":  "services/imagecache",
	"netconfig":   "services/netconfig",
	"migration":   "services/migration",
}

func executeTiltfile(t *testing.T, args []string) *tiltfile.Plan {
	t.Helper()
	plan, err := tiltfile.Execute(filepath.Join(repoRoot(t), "Tiltfile"), tiltfile.Options{
		Args:      args,
		Kustomize: manifests.BuildYAML,
	})
	if err != nil {
		t.Fatalf("tilt up -- %s: %v", strings.Join(args, " "), err)
	}
	return plan
}

// builtBy collects the files the local_resources build (`go build -o X`):
// they do not exist before Tilt runs, and that is fine.
var goBuildOutput = regexp.MustCompile(`go build\b[^&;|]*?\s-o\s+(\S+)`)

// builtPackage is the package a `go build` command line builds (its last
// word).
func builtPackage(cmd string) string {
	f := strings.Fields(cmd)
	if len(f) == 0 {
		return ""
	}
	return f[len(f)-1]
}

func buildOutputs(plan *tiltfile.Plan) map[string]bool {
	out := map[string]bool{}
	for _, lr := range plan.LocalResources {
		for _, m := range goBuildOutput.FindAllStringSubmatch(lr.Cmd, -1) {
			p := m[1]
			if !filepath.IsAbs(p) {
				p = filepath.Join(lr.Dir, p)
			}
			out[p] = true
		}
	}
	return out
}

// remoteLoad is a load() of anything with a scheme: ext://, https://, …
var remoteLoad = regexp.MustCompile(`load\(\s*['"][a-z]+://`)

// Besides the interpreter refusing such loads when they run, no file may
// contain one, even on a branch the tests do not execute.
func TestTiltfileHasNoRemoteLoads(t *testing.T) {
	root := repoRoot(t)
	files, _ := filepath.Glob(filepath.Join(root, "tilt", "*"))
	for _, f := range append(files, filepath.Join(root, "Tiltfile")) {
		data, err := os.ReadFile(f)
		if err != nil {
			if info, statErr := os.Stat(f); statErr == nil && info.IsDir() {
				continue
			}
			t.Fatal(err)
		}
		if m := remoteLoad.FindString(string(data)); m != "" {
			t.Errorf("%s: %s…: Tilt would download the extension; vendor it into tilt/", f, m)
		}
	}
}

func TestTiltfileBothModes(t *testing.T) {
	root := repoRoot(t)
	for _, mode := range []struct {
		name string
		args []string
	}{{"cluster", nil}, {"local", []string{"--local"}}} {
		t.Run(mode.name, func(t *testing.T) {
			plan := executeTiltfile(t, mode.args)
			if plan.VersionConstraint == "" {
				t.Error("no version_settings(constraint=…): serve_dir, labels and probes need a recent Tilt")
			}
			outputs := buildOutputs(plan)
			for _, p := range plan.Paths {
				if !strings.HasPrefix(p.Path, root+string(filepath.Separator)) && p.Path != root {
					t.Errorf("%s(%s=%s) points outside the repository", p.Builtin, p.Arg, p.Path)
					continue
				}
				if _, err := os.Stat(p.Path); err != nil && !outputs[p.Path] && !underAny(p.Path, outputs) {
					t.Errorf("%s(%s=…): %s does not exist and no local_resource builds it", p.Builtin, p.Arg, p.Path)
				}
			}
			if len(plan.Loaded) == 0 {
				t.Error("the Tiltfile loads no helpers from tilt/")
			}
			for _, l := range plan.Loaded {
				if filepath.Dir(l) != filepath.Join(root, "tilt") {
					t.Errorf("loaded %s, want helpers from tilt/", l)
				}
			}
			names := map[string]bool{}
			for _, lr := range plan.LocalResources {
				names[lr.Name] = true
			}
			for _, r := range plan.K8sResources {
				names[r.Workload] = true
			}
			// Both kinds of resource must depend only on resources that
			// exist and carry labels (Tilt's UI groups by them).
			checkResource := func(kind, name string, deps, labels []string) {
				t.Helper()
				for _, d := range deps {
					if !names[d] {
						t.Errorf("%s %s depends on %s, which is no resource", kind, name, d)
					}
				}
				if len(labels) == 0 {
					t.Errorf("%s %s has no labels", kind, name)
				}
			}
			for _, lr := range plan.LocalResources {
				checkResource("local_resource", lr.Name, lr.ResourceDeps, lr.Labels)
			}
			for _, r := range plan.K8sResources {
				checkResource("k8s_resource", r.Workload, r.ResourceDeps, r.Labels)
			}
			if mode.name == "cluster" {
				checkClusterMode(t, plan)
			} else {
				checkLocalMode(t, plan)
			}
		})
	}
}

func underAny(p string, dirs map[string]bool) bool {
	for d := range dirs {
		if strings.HasPrefix(d, p+string(filepath.Separator)) {
			return true // p is a folder that will hold a build output
		}
	}
	return false
}

// tilt up: an image per service and one for the simulator, each from the
// Dockerfile's dev stage with a binary of its own, live-updated; the tilt
// overlay (dev with per-service images); a k8s_resource with a health port
// forward per service.
func checkClusterMode(t *testing.T, plan *tiltfile.Plan) {
	root := repoRoot(t)
	// A Go change updates the services at once; the simulated datacenter
	// (whose restart wipes its inventory) waits for its manual trigger.
	for _, r := range plan.K8sResources {
		want := tiltfile.TriggerAuto
		if r.Workload == "simulator" {
			want = tiltfile.TriggerManual
		}
		if r.TriggerMode != want {
			t.Errorf("k8s_resource %s: trigger mode %v, want %v", r.Workload, r.TriggerMode, want)
		}
	}
	if len(plan.AllowK8sContexts) == 0 {
		t.Error("cluster mode calls no allow_k8s_contexts: Tilt would refuse every non-local context without saying why")
	}
	if want := filepath.Join(root, "deploy", "k8s", "overlays", "tilt"); !slices.Equal(plan.Kustomized, []string{want}) {
		t.Errorf("kustomize() of %v, want the tilt overlay", plan.Kustomized)
	}
	if len(plan.YAML) != 1 {
		t.Fatalf("k8s_yaml called %d times, want once", len(plan.YAML))
	}
	objs, err := manifests.Decode([]byte(plan.YAML[0]))
	if err != nil {
		t.Fatalf("the YAML given to k8s_yaml: %v", err)
	}
	deployed := map[string]bool{}
	imageOf := map[string]string{} // workload → image repository
	for _, w := range workloads(objs) {
		deployed[w.name] = true
		for _, c := range w.template.Spec.Containers {
			if strings.HasPrefix(imageRepo(c.Image), podvisorImage) {
				imageOf[w.name] = imageRepo(c.Image)
			}
		}
	}

	// Which local_resource builds which binary, with which deps.
	builder := map[string]tiltfile.LocalResource{}
	for _, lr := range plan.LocalResources {
		for out := range buildOutputs(&tiltfile.Plan{LocalResources: []tiltfile.LocalResource{lr}}) {
			builder[out] = lr
		}
	}
	images := map[string]tiltfile.Image{}
	for _, img := range plan.Images {
		images[img.Ref] = img
		checkDevImage(t, img, builder)
	}
	// Each service runs an image of its own whose binary is rebuilt from its
	// module and the shared code, never from another service's module: a
	// change to one service restarts that service alone. The simulator's
	// binary depends on no service.
	want := map[string]string{"simulator": ""}
	for _, s := range services {
		want[s] = s
	}
	for workload, service := range want {
		ref := imageOf[workload]
		img, ok := images[ref]
		if !ok {
			t.Errorf("workload %s runs %q, which no docker_build builds", workload, ref)
			continue
		}
		if service != "" && ref == podvisorImage {
			t.Errorf("service %s runs the shared image %s: every Go change would restart it", service, ref)
		}
		for _, step := range img.LiveUpdate {
			lr, ok := builder[step.Local]
			if step.Kind != "sync" || !ok {
				continue
			}
			// A service runs podvisord, as in production: the smaller
			// executable without the simulator and servers.
			if pkg := builtPackage(lr.Cmd); (service != "") != (pkg == "./cmd/podvisord") {
				t.Errorf("%s's binary is built from %q", workload, pkg)
			}
			for other, module := range modules {
				has := slices.Contains(lr.Deps, filepath.Join(root, module))
				if other == service && !has {
					t.Errorf("%s's binary (%s) does not watch its module %s", workload, lr.Name, module)
				}
				if other != service && has {
					t.Errorf("%s's binary (%s) is rebuilt when %s changes", workload, lr.Name, module)
				}
			}
		}
	}

	byWorkload := map[string]tiltfile.K8sResource{}
	for _, r := range plan.K8sResources {
		if !deployed[r.Workload] {
			t.Errorf("k8s_resource(%q): no such workload in the dev overlay", r.Workload)
		}
		byWorkload[r.Workload] = r
	}
	for _, s := range services {
		r, ok := byWorkload[s]
		if !ok {
			t.Errorf("no k8s_resource for service %s", s)
			continue
		}
		if !slices.ContainsFunc(r.PortForwards, func(pf tiltfile.PortForward) bool { return pf.Container == 8081 }) {
			t.Errorf("k8s_resource %s forwards no port to the health port 8081: %+v", s, r.PortForwards)
		}
	}
	checkUniqueLocalPorts(t, plan)
}

// tilt up -- --local: infra runs `podvisor up --services=none`, each service
// `podvisord serve <name>` with its own health port, watching its module.
func checkLocalMode(t *testing.T, plan *tiltfile.Plan) {
	root := repoRoot(t)
	if len(plan.Images) != 0 || len(plan.K8sResources) != 0 || len(plan.YAML) != 0 {
		t.Errorf("local mode builds images or deploys to Kubernetes: %d images, %d k8s resources", len(plan.Images), len(plan.K8sResources))
	}
	byName := map[string]tiltfile.LocalResource{}
	for _, lr := range plan.LocalResources {
		byName[lr.Name] = lr
		if lr.ServeCmd != "" {
			args, ok := podvisorArgsIn(lr.ServeCmd)
			if !ok {
				t.Errorf("local_resource %s serves %q, which runs no podvisor command", lr.Name, lr.ServeCmd)
			} else if err := checkPodvisorArgs(args); err != nil {
				t.Errorf("local_resource %s: %v", lr.Name, err)
			}
		}
	}
	infra, ok := byName["infra"]
	if !ok {
		t.Fatal("no local_resource infra")
	}
	if args, _ := podvisorArgsIn(infra.ServeCmd); !slices.Equal(args, []string{"up", "--services=none"}) {
		t.Errorf("infra serves %q, want `podvisor up --services=none`", infra.ServeCmd)
	}
	if infra.Readiness == nil {
		t.Error("infra has no readiness probe: services would start before the bus")
	}
	ports := map[int]string{}
	for _, s := range services {
		lr, ok := byName[s]
		if !ok {
			t.Errorf("no local_resource for service %s", s)
			continue
		}
		if args, _ := podvisorArgsIn(lr.ServeCmd); !slices.Equal(args, []string{"serve", s}) || !strings.Contains(lr.ServeCmd, "/podvisord serve") ||
			builtPackage(lr.Cmd) != "./cmd/podvisord" {
			t.Errorf("%s builds %q and serves %q, want ./cmd/podvisord built and `podvisord serve %s`", s, lr.Cmd, lr.ServeCmd, s)
		}
		for _, want := range []string{modules[s], "events", "shared"} {
			if !slices.Contains(lr.Deps, filepath.Join(root, want)) {
				t.Errorf("%s: deps %v lack %s", s, lr.Deps, want)
			}
		}
		if !slices.Contains(lr.ResourceDeps, "infra") {
			t.Errorf("%s: resource_deps %v lack infra", s, lr.ResourceDeps)
		}
		port := healthPort(t, s, lr.ServeEnv["PODVISOR_HEALTH_ADDR"])
		if other, dup := ports[port]; dup {
			t.Errorf("%s and %s both use health port %d", s, other, port)
		}
		ports[port] = s
		if lr.Readiness == nil || lr.Readiness.HTTPGet == nil || lr.Readiness.HTTPGet.Port != port || lr.Readiness.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: readiness probe %+v, want GET /readyz on its health port %d", s, lr.Readiness, port)
		}
	}
}

func healthPort(t *testing.T, service, addr string) int {
	t.Helper()
	_, portText, ok := strings.Cut(addr, ":")
	port, err := strconv.Atoi(portText)
	if !ok || err != nil || port == 0 {
		t.Errorf("%s: PODVISOR_HEALTH_ADDR %q has no fixed port", service, addr)
	}
	return port
}

func checkUniqueLocalPorts(t *testing.T, plan *tiltfile.Plan) {
	seen := map[int]string{}
	for _, r := range plan.K8sResources {
		for _, pf := range r.PortForwards {
			if other, dup := seen[pf.Local]; dup {
				t.Errorf("local port %d forwarded for both %s and %s", pf.Local, other, r.Workload)
			}
			seen[pf.Local] = r.Workload
		}
	}
}

func parseDockerfile(t *testing.T) *dockerfile.File {
	t.Helper()
	f, err := os.Open(filepath.Join("docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	df, err := dockerfile.Parse(f)
	if err != nil {
		t.Fatalf("deploy/docker/Dockerfile: %v", err)
	}
	return df
}

// tilt-settings.json (here through $PODVISOR_TILT_SETTINGS) chooses the
// allowed kube contexts and the default registry.
func TestTiltfileSettingsFile(t *testing.T) {
	settings := filepath.Join(t.TempDir(), "settings.json")
	if err := os.WriteFile(settings, []byte(`{"allow_k8s_contexts": ["gke_team_dev"], "default_registry": "registry.example.com/team"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PODVISOR_TILT_SETTINGS", settings)
	plan := executeTiltfile(t, nil)
	if !slices.Equal(plan.AllowK8sContexts, []string{"gke_team_dev"}) || plan.DefaultRegistry != "registry.example.com/team" {
		t.Errorf("allow_k8s_contexts %v, default_registry %q; want the settings file's", plan.AllowK8sContexts, plan.DefaultRegistry)
	}
	// The example in tilt/ is valid JSON with the same keys.
	t.Setenv("PODVISOR_TILT_SETTINGS", filepath.Join(repoRoot(t), "tilt", "settings.example.json"))
	if plan := executeTiltfile(t, nil); plan.DefaultRegistry == "" || len(plan.AllowK8sContexts) == 0 {
		t.Errorf("tilt/settings.example.json sets no registry or contexts")
	}
}

// checkDevImage: an image from the Dockerfile's dev stage, whose context holds
// what the stage copies, live-updated with a binary a local_resource builds.
func checkDevImage(t *testing.T, img tiltfile.Image, builder map[string]tiltfile.LocalResource) {
	t.Helper()
	root := repoRoot(t)
	if img.Dockerfile != filepath.Join(root, "deploy", "docker", "Dockerfile") || img.Context != root {
		t.Errorf("docker_build(%s): Dockerfile %s, context %s; want deploy/docker/Dockerfile with the workspace as context", img.Ref, img.Dockerfile, img.Context)
	}
	df := parseDockerfile(t)
	stage, ok := df.Stage(img.Target)
	if !ok {
		t.Fatalf("docker_build(%s) target %q is not a stage of the Dockerfile", img.Ref, img.Target)
	}
	// Whatever the stage copies from the context must be in `only`, or the
	// build would not see it.
	args := stageArgs(stage)
	for k, v := range img.BuildArgs {
		args[k] = v
	}
	for _, cp := range stage.All("COPY") {
		if _, fromStage := cp.Flag("from"); fromStage {
			continue
		}
		fields := strings.Fields(os.Expand(cp.Args, func(k string) string { return args[k] }))
		for _, src := range fields[:len(fields)-1] {
			src = strings.TrimSuffix(src, "/")
			if !slices.ContainsFunc(img.Only, func(o string) bool { return src == o || strings.HasPrefix(src, o+"/") }) {
				t.Errorf("docker_build(%s): stage %s copies %s, which only=%v leaves out of the context", img.Ref, img.Target, src, img.Only)
			}
		}
	}
	var synced, restarted bool
	for _, s := range img.LiveUpdate {
		switch s.Kind {
		case "sync":
			if _, ok := builder[s.Local]; !ok {
				t.Errorf("docker_build(%s): live_update syncs %s, which no local_resource builds", img.Ref, s.Local)
			}
			if !strings.HasPrefix(s.Remote, "/tmp/") {
				t.Errorf("docker_build(%s): live_update syncs to %s: the root filesystem is read-only, only /tmp (emptyDir) is writable", img.Ref, s.Remote)
			}
			synced = true
		case "run":
			script := filepath.Join(root, strings.TrimPrefix(s.Cmd, "/"))
			if _, err := os.Stat(script); err != nil {
				t.Errorf("docker_build(%s): live_update runs %s: %v", img.Ref, s.Cmd, err)
			}
			restarted = true
		}
	}
	if !synced || !restarted {
		t.Errorf("docker_build(%s): live_update = %+v, want a sync of the built binary and a run that restarts it", img.Ref, img.LiveUpdate)
	}
}

// stageArgs are the defaults of a stage's ARG instructions.
func stageArgs(stage dockerfile.Stage) map[string]string {
	args := map[string]string{}
	for _, a := range stage.All("ARG") {
		name, def, _ := strings.Cut(a.Args, "=")
		args[name] = def
	}
	return args
}
