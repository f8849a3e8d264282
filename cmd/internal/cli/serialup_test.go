package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/serve"
)

// TestUpWithSerialGuestChannels is `podvisor up --guest-channel serial` as a
// user meets it: the provisioner gives every pod VM a network serial port
// to the host agents' concentrator (what a vCenter whose hosts run no
// podvisor code needs), and a pod runs, logs and execs through it.
func TestUpWithSerialGuestChannels(t *testing.T) {
	sys, dir := guestsUp(t, "pods run their containers in simulated guests", allinone.Config{HostsPerCluster: 1,
		GuestChannel: allinone.GuestChannelSerial})
	if sys.Concentrator == "" {
		t.Fatal("up --guest-channel serial runs no concentrator")
	}
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
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
	if err != nil || info.VM.SerialURI != sys.Concentrator || !strings.HasPrefix(sys.Concentrator, "ssl://") ||
		!strings.Contains(string(boot), `"channel": "serial:`) {
		t.Fatalf("the pod's guest: network serial port %q (want %s, TLS), boot config (%v):\n%s", info.VM.SerialURI, sys.Concentrator, err, boot)
	}
	eventuallyWithin(t, 10*time.Second, "podvisor logs wire", func() bool {
		out, _, code := run(t, dir, "", "logs", "wire")
		return code == 0 && out == "on the wire\n"
	})
	if out, errOut, code := run(t, dir, "", "exec", "wire", "--", "echo", "back"); code != 0 || out != "back\n" {
		t.Errorf("exec wire -- echo back: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
