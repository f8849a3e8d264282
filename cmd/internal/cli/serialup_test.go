package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/sim/guest"
)

// TestUpWithSerialGuestChannels is `podvisor up --guest-channel serial` as a
// user meets it: the provisioner gives every pod VM a network serial port
// to the host agents' concentrator (what a vCenter whose hosts run no
// podvisor code needs), and a pod runs, logs and execs through it. The
// concentrator is the ports' proxy, so the pod migrates (a vMotion, which
// vSphere refuses for a port connected to a remote system directly) and
// logs and execs on its new host over the line that moved with it.
func TestUpWithSerialGuestChannels(t *testing.T) {
	sys, dir := guestsUp(t, "pods run their containers in simulated guests", allinone.Config{HostsPerCluster: 2,
		GuestChannel: allinone.GuestChannelSerial})
	if sys.Concentrator == "" {
		t.Fatal("up --guest-channel serial runs no concentrator")
	}
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	if vars["PODVISOR_HOST_AGENTS"] != "2" || vars["PODVISOR_GUEST_CHANNEL"] != allinone.GuestChannelSerial || vars["PODVISOR_HOST_AGENTS_LISTEN"] != sys.Concentrator {
		t.Errorf("env file: host agents %q, guest channel %q at %q; want 2, serial at %s",
			vars["PODVISOR_HOST_AGENTS"], vars["PODVISOR_GUEST_CHANNEL"], vars["PODVISOR_HOST_AGENTS_LISTEN"], sys.Concentrator)
	}
	var banner strings.Builder
	sys.PrintEndpoints(&banner, "env", time.Second)
	if want := "host agents: 2, one per host; guest channel serial (concentrator " + sys.Concentrator + ")"; !strings.Contains(banner.String(), want) {
		t.Errorf("banner:\n%s\nwant %q", banner.String(), want)
	}
	manifest := "apiVersion: v1\nkind: Pod\nmetadata: {name: wire}\nspec: {terminationGracePeriodSeconds: 1, containers: [{name: c, image: " +
		vars["PODVISOR_REGISTRY"] + "/podvisor/busybox:1.0, command: [sh, -c, 'echo on the wire; sleep 3600']}]}\n"
	mustRun(t, dir, manifest, "apply", "-f", "-")
	eventuallyWithin(t, 90*time.Second, "wire Running", func() bool {
		out, _, _ := run(t, dir, "", "get", "pod", "wire", "-o", "jsonpath={.status.phase}")
		return out == "Running"
	})
	// The pod's guest (the only one running) talks on its serial device.
	running := sys.Datacenter.Guests().Running()
	if len(running) != 1 {
		t.Fatalf("guests running: %v, want the pod's alone", running)
	}
	info, _ := sys.Datacenter.Guests().Guest(running[0])
	boot, err := os.ReadFile(filepath.Join(info.Dir, "boot.json"))
	if err != nil || info.VM.SerialURI != sys.Concentrator || !strings.HasPrefix(sys.Concentrator, "telnets://") ||
		!strings.Contains(string(boot), `"channel": "serial:`) {
		t.Fatalf("the pod's guest: network serial port %q (want %s, the ports' proxy over TLS), boot config (%v):\n%s", info.VM.SerialURI, sys.Concentrator, err, boot)
	}
	eventuallyWithin(t, 10*time.Second, "podvisor logs wire", func() bool {
		out, _, code := run(t, dir, "", "logs", "wire")
		return code == 0 && out == "on the wire\n"
	})
	if out, errOut, code := run(t, dir, "", "exec", "wire", "--", "echo", "back"); code != 0 || out != "back\n" {
		t.Errorf("exec wire -- echo back: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	from := info.VM.Host
	if out, errOut, code := run(t, dir, "", "migrate", "pod", "wire", "--wait", "60s"); code != 0 || !strings.Contains(out, "migrated default/wire: "+from+" → ") {
		t.Fatalf("migrate pod wire: exit %d\n%s%s", code, out, errOut)
	}
	moved, _ := sys.Datacenter.Guests().Guest(running[0])
	if moved.VM.Host == from || moved.PID != info.PID || moved.Connections != 1 {
		t.Fatalf("after the migration the guest is process %d on %s with %d connections; want process %d, on another host than %s, its line connected",
			moved.PID, moved.VM.Host, moved.Connections, info.PID, from)
	}
	eventuallyWithin(t, 20*time.Second, "podvisor logs wire on its new host", func() bool {
		out, _, code := run(t, dir, "", "logs", "wire")
		return code == 0 && out == "on the wire\n"
	})
	if out, errOut, code := run(t, dir, "", "exec", "wire", "--", "echo", "moved"); code != 0 || out != "moved\n" {
		t.Errorf("exec wire -- echo moved after the migration: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestUpWithSerialGuestChannelsForksPodVMs is `podvisor up --guests on
// --guest-channel serial --templates-warm 1`: pod VMs talk on network serial
// ports, as on a vCenter, and are forked from templates. The template's guest
// greets the concentrator as the template, which routes its line to its
// host's agent by the template's record, so the template is prepared; the
// next pod is an instant clone whose guest runs on a line of its own, and
// the one after it resumes the template's standby, whose serial line is
// connected only then, and greets the concentrator as that pod: both run,
// log and exec.
func TestUpWithSerialGuestChannelsForksPodVMs(t *testing.T) {
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: 1,
		GuestChannel: allinone.GuestChannelSerial, TemplatesWarm: 1,
		Settings: config.Map(map[string]string{provisioner.EnvEphemeralDisk: "128"})})
	if sys.Concentrator == "" {
		t.Fatal("up --guest-channel serial runs no concentrator")
	}
	f := newForkUp(t, sys, dir)
	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag
	if st, reason := forkedOf(f.deploy("first", image)); st != events.ConditionFalse || reason != templates.ReasonNoTemplate {
		t.Fatalf("first pod: VMForked %s/%s, want False/NoTemplate", st, reason)
	}
	tmpl := f.preparedTemplate("")
	if tmpl.Shape.Channel != sys.Concentrator {
		t.Fatalf("the template's shape names channel %q, want the concentrator %s", tmpl.Shape.Channel, sys.Concentrator)
	}
	// serialGuest checks a pod's guest talks on its serial device, to the
	// concentrator, and returns it.
	serialGuest := func(r *events.PodRecord) guest.Info {
		t.Helper()
		g, ok := sys.Datacenter.Guests().Guest(r.VMRef)
		if !ok {
			t.Fatalf("pod %s runs no guest", r.Name)
		}
		boot, err := os.ReadFile(filepath.Join(g.Dir, "boot.json"))
		if err != nil || g.VM.SerialURI != sys.Concentrator || !strings.Contains(string(boot), `"channel": "serial:`) {
			t.Fatalf("pod %s's guest: network serial port %q (want %s), boot config (%v):\n%s", r.Name, g.VM.SerialURI, sys.Concentrator, err, boot)
		}
		if out, errOut, code := run(t, dir, "", "exec", r.Name, "--", "hostname"); code != 0 || out != r.Name+"\n" {
			t.Errorf("exec %s -- hostname: exit %d, stdout %q, stderr %q", r.Name, code, out, errOut)
		}
		return g
	}

	serialGuest(f.deployFork("second", image, tmpl))
	standby := f.standby(tmpl)
	if standby.Connections != 0 {
		t.Fatalf("the template's standby has %d connections to the concentrator, want its line cut until a VM takes it over", standby.Connections)
	}
	if g := serialGuest(f.deployFork("resumed", image, tmpl)); g.PID != standby.PID || !g.Resumed {
		t.Fatalf("pod resumed's guest is process %d (resumed %v), want the template's standby %d", g.PID, g.Resumed, standby.PID)
	}
}
