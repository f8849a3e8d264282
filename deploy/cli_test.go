package deploy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The podvisor CLI lives in the cmd module, which this module does not
// import. The subcommands and flags that the manifests and the Tiltfile pass
// to it are therefore listed here, mirroring `podvisor serve SERVICE` and the
// flags of `podvisor up` (plus the global --state-dir and --nats-url);
// TestArgsAgainstBuiltCLI holds this list to the real binary.
var upFlags = []string{
	"services", "listen", "state-dir", "nats-url",
	"nats-port", "vcenter-port", "registry-port", "ui-port",
	"clusters", "hosts-per-cluster", "vcenter-url", "redis-url", "registry", "seed",
}

// serveTargets is what `podvisor serve` runs in a container: the services,
// the read-only dashboard and the host agents (on a vCenter, behind their
// concentrator).
var serveTargets = append(slices.Clone(services), "dashboard", "hostagent")

// checkPodvisorArgs accepts `serve <service>` and `up [--flag=value …]`.
// Flags must use the --name=value form, so that a value is never mistaken
// for a subcommand.
func checkPodvisorArgs(args []string) error {
	if len(args) == 0 {
		return errors.New("no subcommand: the image's entrypoint is podvisor")
	}
	switch args[0] {
	case "serve":
		if len(args) != 2 {
			return fmt.Errorf("serve takes exactly one service, got %q", args[1:])
		}
		if !slices.Contains(serveTargets, args[1]) {
			return fmt.Errorf("serve %s: unknown service, want one of %v", args[1], serveTargets)
		}
	case "up":
		for _, a := range args[1:] {
			name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !strings.HasPrefix(a, "--") || !slices.Contains(upFlags, name) {
				return fmt.Errorf("up: %q is not one of its flags %v (written --name=value)", a, upFlags)
			}
		}
	default:
		return fmt.Errorf("%q is not a podvisor subcommand a container or Tilt should run (serve, up)", args[0])
	}
	return nil
}

// shellInvocation finds `…/podvisor <args>` or `…/podvisord <args>` (one
// service) in a shell command line and returns the args, up to the next
// shell operator.
var shellInvocation = regexp.MustCompile(`(?:^|[\s/])podvisord?((?:\s+[^\s&|;]+)*)\s*(?:$|[&|;])`)

func podvisorArgsIn(cmd string) ([]string, bool) {
	m := shellInvocation.FindStringSubmatch(cmd)
	if m == nil {
		return nil, false
	}
	return strings.Fields(m[1]), true
}

func TestCheckPodvisorArgs(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{args: []string{"serve", "scheduler"}},
		{args: []string{"serve", "dashboard"}},
		{args: []string{"up", "--services=none", "--listen=0.0.0.0"}},
		{args: []string{"serve", "schedular"}, wantErr: "unknown service"},
		{args: []string{"serve"}, wantErr: "exactly one service"},
		{args: []string{"up", "--listen", "0.0.0.0"}, wantErr: `"0.0.0.0" is not one of its flags`},
		{args: []string{"up", "--servics=none"}, wantErr: "not one of its flags"},
		{args: []string{"get", "pods"}, wantErr: "not a podvisor subcommand"},
		{args: nil, wantErr: "no subcommand"},
	}
	for _, tt := range tests {
		err := checkPodvisorArgs(tt.args)
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("checkPodvisorArgs(%q) = %v, want error %q", tt.args, err, tt.wantErr)
		}
	}
	if args, ok := podvisorArgsIn("rm -f x && exec bin/local/podvisor up --services=none"); !ok || !slices.Equal(args, []string{"up", "--services=none"}) {
		t.Errorf("podvisorArgsIn = %q %v", args, ok)
	}
	if args, ok := podvisorArgsIn(". env && exec bin/local/scheduler/podvisor serve scheduler; echo"); !ok || !slices.Equal(args, []string{"serve", "scheduler"}) {
		t.Errorf("podvisorArgsIn = %q %v", args, ok)
	}
}

// TestArgsAgainstBuiltCLI runs the real CLI with every argument list the
// manifests and the Tiltfile use. It needs a built binary:
//
//	make build && PODVISOR_BIN=$PWD/bin/podvisor go test ./deploy/...
func TestArgsAgainstBuiltCLI(t *testing.T) {
	bin := os.Getenv("PODVISOR_BIN")
	if bin == "" {
		if _, err := os.Stat(filepath.Join(repoRoot(t), "cmd", "podvisor")); err == nil {
			t.Skip("cmd/podvisor exists: set PODVISOR_BIN to a built podvisor (make build) to check the manifests' and the Tiltfile's arguments against it")
		}
		t.Skip("no podvisor CLI in this tree yet")
	}
	var invocations [][]string
	for _, overlay := range []string{"dev", "prod"} {
		for _, w := range workloads(build(t, "overlays/"+overlay)) {
			for _, c := range w.template.Spec.Containers {
				if imageRepo(c.Image) == podvisorImage {
					invocations = append(invocations, c.Args)
				}
			}
		}
	}
	plan := executeTiltfile(t, []string{"--local"})
	for _, lr := range plan.LocalResources {
		if args, ok := podvisorArgsIn(lr.ServeCmd); ok {
			invocations = append(invocations, args)
		}
	}
	help := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append(args, "--help")...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %s --help: %v\n%s", bin, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The services `serve` knows: its help, and the error for a service it
	// does not know, name them.
	bogus, _ := exec.Command(bin, "serve", "no-such-service").CombinedOutput()
	serveHelp := help("serve") + string(bogus)
	upHelp := help("up")
	for _, args := range invocations {
		switch args[0] {
		case "serve":
			if !strings.Contains(serveHelp, args[1]) {
				t.Errorf("podvisor serve does not know the service %s (neither `serve --help` nor `serve no-such-service` names it)", args[1])
			}
		case "up":
			for _, a := range args[1:] {
				name, _, _ := strings.Cut(a, "=")
				if !strings.Contains(upHelp, name+" ") && !strings.Contains(upHelp, name+"=") {
					t.Errorf("`podvisor up --help` does not list the flag %s", name)
				}
			}
		}
	}
}
