package cli

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// TestNativeVMThroughTheCLI is the acceptance for native VMs, as a
// user runs it on `podvisor up`: apply a class (2 vCPU / 4 GiB), an image
// from the seeded registry and a VM whose user data writes a file; get vm
// shows it PoweredOn with a host and an IP; vCenter has the VM with that
// size on that host; the guest's own init wrote the file; re-applying with
// PoweredOff powers it off; VMs filling the hosts leave a pod Pending until
// one is deleted.
func TestNativeVMThroughTheCLI(t *testing.T) {
	logs := &syncbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("system log:\n%s", logs.Bytes())
		}
	})
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: 2, Logger: logger}, "debugfs")
	ctx := t.Context()
	t.Cleanup(func() {
		if t.Failed() {
			evs, errs, _ := run(t, dir, "", "events")
			t.Logf("events:\n%s%s", evs, errs)
		}
	})
	registry := sys.Endpoints.Registry
	apply := func(manifest string) string {
		t.Helper()
		f := filepath.Join(t.TempDir(), "m.yaml")
		if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
			t.Fatal(err)
		}
		out, errOut, code := run(t, dir, "", "apply", "-f", f)
		if code != 0 {
			t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
		}
		return out
	}
	vmManifest := func(power string) string {
		return `apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm1, namespace: team-a}
spec:
  className: small
  imageName: vmos
  powerState: ` + power + `
  networks: [default]
  userData: |
    #!/bin/sh
    echo "written by the guest's init" > /var/lib/hello
`
	}
	out := apply(`apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec: {cpus: 2, memory: 4Gi}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineImage
metadata: {name: vmos}
spec: {oci: ` + registry + `/podvisor/vmos:1.0}
---
` + vmManifest("PoweredOn"))
	if !strings.Contains(out, "vm/team-a/vm1 accepted") {
		t.Errorf("apply said:\n%s\nwant the VM accepted", out)
	}

	getVM := func() events.VirtualMachine {
		t.Helper()
		out, errOut, code := run(t, dir, "", "get", "vm", "vm1", "-n", "team-a", "-o", "json")
		if code != 0 {
			t.Fatalf("get vm: exit %d: %s", code, errOut)
		}
		var vm events.VirtualMachine
		if err := json.Unmarshal([]byte(out), &vm); err != nil || vm.Status == nil {
			t.Fatalf("get vm -o json: %v\n%s", err, out)
		}
		return vm
	}
	var vm events.VirtualMachine
	eventuallyWithin(t, 60*time.Second, "vm1 PoweredOn with a host and an IP", func() bool {
		vm = getVM()
		return vm.Status.PowerState == events.PowerStatePoweredOn && vm.Status.Host != "" && len(vm.Status.IPs) == 1
	})

	// vCenter's view, as govc shows it.
	c := simtest.Client(t, sys.Datacenter)
	name := events.NativeVMName(vm.Status.UID)
	ref, err := find.NewFinder(c.Client, true).VirtualMachine(ctx, "/*/vm/podvisor-vms/team-a/"+name)
	if err != nil {
		t.Fatalf("vCenter has no VM %s: %v", name, err)
	}
	readVM := func() mo.VirtualMachine {
		var m mo.VirtualMachine
		if err := ref.Properties(ctx, ref.Reference(), []string{"config.hardware", "runtime"}, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := readVM()
	var host mo.HostSystem
	if err := c.RetrieveOne(ctx, *m.Runtime.Host, []string{"name"}, &host); err != nil {
		t.Fatal(err)
	}
	if m.Config.Hardware.NumCPU != 2 || m.Config.Hardware.MemoryMB != 4096 || host.Name != vm.Status.Host {
		t.Errorf("vCenter: %d vCPU, %d MB on %s; want 2 vCPU, 4096 MB on %s", m.Config.Hardware.NumCPU, m.Config.Hardware.MemoryMB, host.Name, vm.Status.Host)
	}

	// The guest booted the image's init, which ran the user data.
	g, ok := sys.Datacenter.Guests().Guest(ref.Reference().Value)
	if !ok || g.VM.Native == nil {
		t.Fatal("the VM runs no native guest")
	}
	eventuallyWithin(t, 20*time.Second, "the guest's init to run the user data", func() bool {
		b, _ := os.ReadFile(filepath.Join(g.Dir, "console.log"))
		return strings.Contains(string(b), "init: user data script exited 0") && strings.Contains(string(b), "init: eth0 "+vm.Status.IPs[0])
	})

	// Re-applied powered off: vCenter powers it off.
	if out := apply(vmManifest("PoweredOff")); !strings.Contains(out, "accepted") {
		t.Errorf("re-apply said:\n%s", out)
	}
	eventuallyWithin(t, 30*time.Second, "vCenter to report vm1 powered off", func() bool {
		return readVM().Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff && getVM().Status.PowerState == events.PowerStatePoweredOff
	})
	// The file the guest wrote is on the VM's boot disk.
	boot := filepath.Join(filepath.Dir(g.VM.Native.BootDisk), "root-flat.vmdk")
	if got, err := exec.Command("debugfs", "-R", "cat /var/lib/hello", boot).Output(); err != nil || !strings.Contains(string(got), "written by the guest's init") {
		t.Errorf("/var/lib/hello on the boot disk = %q (%v)", got, err)
	}

	// Filling every host with VMs leaves a pod Pending; deleting one lets
	// it be placed.
	eventuallyWithin(t, 20*time.Second, "vm1's room in its host's record", func() bool {
		return hostRecord(t, dir, vm.Status.Host).AllocatedMemoryBytes >= 4<<30
	})
	hosts := sys.Datacenter.Hosts()
	for i, h := range hosts {
		rec := hostRecord(t, dir, h.Name)
		// All the memory the scheduler may still give on that host, less
		// than a pod VM needs left over.
		free := rec.MemoryCapacityBytes - rec.AllocatedMemoryBytes
		apply(fmt.Sprintf(`apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: fill-%d}
spec: {cpus: 1, memory: %dMi}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: fill-%d, namespace: team-a}
spec: {className: fill-%d, imageName: vmos, powerState: PoweredOff}
`, i, (free>>20)/4*4-4, i, i))
		eventuallyWithin(t, 30*time.Second, "fill VM placed", func() bool {
			out, _, _ := run(t, dir, "", "get", "vm", fmt.Sprintf("fill-%d", i), "-n", "team-a", "-o", "json")
			var v events.VirtualMachine
			return json.Unmarshal([]byte(out), &v) == nil && v.Status != nil && v.Status.Host != ""
		})
	}
	apply(`apiVersion: v1
kind: Pod
metadata: {name: waits, namespace: team-a}
spec:
  containers:
  - {name: c, image: ` + registry + `/podvisor/busybox:1.0, command: [sleep, "3600"]}
`)
	podPhase := func() string {
		out, _, _ := run(t, dir, "", "get", "pod", "waits", "-n", "team-a", "-o", "json")
		var p struct {
			Status struct {
				Phase      string `json:"phase"`
				Conditions []struct {
					Type, Status, Reason string
				} `json:"conditions"`
			} `json:"status"`
			Spec struct {
				NodeName string `json:"nodeName"`
			} `json:"spec"`
		}
		_ = json.Unmarshal([]byte(out), &p)
		return p.Status.Phase + "/" + p.Spec.NodeName
	}
	eventuallyWithin(t, 20*time.Second, "the pod unschedulable", func() bool {
		out, _, _ := run(t, dir, "", "get", "pods", "-n", "team-a")
		return strings.Contains(out, "Unschedulable") || strings.Contains(strings.ToLower(out), "insufficient")
	})
	if p := podPhase(); !strings.HasPrefix(p, "Pending/") || strings.TrimPrefix(p, "Pending/") != "" {
		t.Fatalf("pod is %s, want Pending without a host while VMs fill every host", p)
	}
	if _, errOut, code := run(t, dir, "", "delete", "vm", "fill-0", "-n", "team-a"); code != 0 {
		t.Fatalf("delete vm: %s", errOut)
	}
	eventuallyWithin(t, 30*time.Second, "the pod placed once a VM left", func() bool {
		return !strings.HasSuffix(podPhase(), "/")
	})
}

// hostRecord reads the scheduler's record of a host through the CLI.
func hostRecord(t *testing.T, dir, name string) events.HostRecord {
	t.Helper()
	out, errOut, code := run(t, dir, "", "get", "host", name, "-o", "json")
	if code != 0 {
		t.Fatalf("get host %s: %s", name, errOut)
	}
	var r events.HostRecord
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("get host -o json: %v\n%s", err, out)
	}
	return r
}
