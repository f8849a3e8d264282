package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/plugins/datastoreavailable"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestNativeVMsDrainAndHostLoss: native VMs leave a drained host like pods
// (vMotioned, the same vCenter VM, its power state kept; one that cannot
// move is evicted and made again elsewhere from its spec, so the host
// still enters maintenance mode), and a lost host's VMs are made again on
// another host in their declared power state.
func TestNativeVMsDrainAndHostLoss(t *testing.T) {
	privtest.RequireTools(t, "mkfs.ext4")
	sys, dir := startUp(t, "all", allinone.Config{Clusters: 2, HostsPerCluster: 3, Guests: allinone.GuestsOff})
	ctx := context.Background()
	t.Cleanup(func() {
		if t.Failed() {
			evs, errs, _ := run(t, dir, "", "events")
			t.Logf("events:\n%s%s", evs, errs)
		}
	})
	apply := func(manifest string) {
		t.Helper()
		f := filepath.Join(t.TempDir(), "m.yaml")
		if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, errOut, code := run(t, dir, "", "apply", "-f", f); code != 0 {
			t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
		}
	}
	getVM := func(name string) events.VirtualMachine {
		t.Helper()
		out, errOut, code := run(t, dir, "", "get", "vm", name, "-n", "team-a", "-o", "json")
		if code != 0 {
			t.Fatalf("get vm %s: exit %d: %s", name, code, errOut)
		}
		var vm events.VirtualMachine
		if err := json.Unmarshal([]byte(out), &vm); err != nil || vm.Status == nil {
			t.Fatalf("get vm -o json: %v\n%s", err, out)
		}
		return vm
	}
	apply(`apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec: {cpus: 1, memory: 512Mi}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineImage
metadata: {name: vmos}
spec: {oci: ` + sys.Endpoints.Registry + `/podvisor/vmos:1.0}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm-on, namespace: team-a}
spec: {className: small, imageName: vmos, powerState: PoweredOn}
---
apiVersion: podvisor.io/v1alpha1
kind: VirtualMachine
metadata: {name: vm-off, namespace: team-a}
spec: {className: small, imageName: vmos, powerState: PoweredOff}
`)
	ready := func(name, power string) func() bool {
		return func() bool {
			v := getVM(name)
			return v.Status.Phase == events.VMPhaseReady && v.Status.PowerState == power && v.Status.Host != "" && v.Status.VM != ""
		}
	}
	eventuallyWithin(t, 60*time.Second, "both VMs Ready", func() bool {
		return ready("vm-on", events.PowerStatePoweredOn)() && ready("vm-off", events.PowerStatePoweredOff)()
	})
	c := simtest.Client(t, sys.Datacenter)
	vcenter := func(ref string) (host string, power types.VirtualMachinePowerState) {
		t.Helper()
		var m mo.VirtualMachine
		if err := c.RetrieveOne(ctx, types.ManagedObjectReference{Type: "VirtualMachine", Value: ref}, []string{"runtime"}, &m); err != nil {
			return "", ""
		}
		var h mo.HostSystem
		if err := c.RetrieveOne(ctx, *m.Runtime.Host, []string{"name"}, &h); err != nil {
			t.Fatal(err)
		}
		return h.Name, m.Runtime.PowerState
	}

	// Drain the powered-on VM's host: it is vMotioned (same vCenter VM,
	// still on), and the host enters maintenance mode.
	on := getVM("vm-on")
	src := on.Status.Host
	if out, errOut, code := run(t, dir, "", "drain", "host", src, "--wait", "25s"); code != 0 || !strings.Contains(out, "maintenance") {
		t.Fatalf("drain host %s: exit %d\n%s%s", src, code, out, errOut)
	}
	moved := getVM("vm-on")
	if moved.Status.Host == src || moved.Status.VM != on.Status.VM || moved.Status.PowerState != events.PowerStatePoweredOn {
		t.Errorf("after the drain: %+v, want the same VM %s powered on away from %s", moved.Status, on.Status.VM, src)
	}
	if h, p := vcenter(moved.Status.VM); h != moved.Status.Host || p != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("vCenter: %s on %s (%s), want on %s powered on", moved.Status.VM, h, p, moved.Status.Host)
	}
	if out, _, _ := run(t, dir, "", "uncordon", "host", src); !strings.Contains(out, "uncordon") {
		t.Logf("uncordon: %s", out)
	}
	// The uncordon ends when vCenter has the host out of maintenance
	// mode; the scheduler learns it from vCenter's updates a moment
	// later, and its host record says so.
	eventually(t, src+" Ready in get hosts", func() bool {
		out, _, _ := run(t, dir, "", "get", "hosts", src)
		return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(src) + `\s+\S+\s+Ready\s`).MatchString(out)
	})

	// `migrate vm` goes through the migration queue like a pod's
	// migration: it is listed there, and its record ends Completed.
	if out, errOut, code := run(t, dir, "", "migrate", "vm", "vm-on", "-n", "team-a", "--id", "mv-back", "--to", src, "--wait", "25s"); code != 0 || !strings.Contains(out, "moved") {
		t.Fatalf("migrate vm vm-on --to %s: exit %d\n%s%s", src, code, out, errOut)
	}
	if v := getVM("vm-on"); v.Status.Host != src {
		t.Errorf("vm-on on %s after migrate vm --to %s", v.Status.Host, src)
	}
	out, errOut, code := run(t, dir, "", "get", "migrations", "-n", "team-a")
	if code != 0 || !strings.Contains(out, "vm/vm-on") || !strings.Contains(out, events.MigrationPhaseCompleted) {
		t.Errorf("get migrations: exit %d\n%s%s, want vm/vm-on Completed", code, out, errOut)
	}

	// A vMotion leaves the disks where they are: a host that does not
	// mount their datastore is refused as a target, the datastore named.
	v := getVM("vm-on")
	if len(v.Status.Datastores) == 0 {
		t.Fatalf("vm-on's status names no datastore: %+v", v.Status)
	}
	far := ""
	for _, h := range sys.Datacenter.Hosts() {
		if !slices.ContainsFunc(v.Status.Datastores, func(ds string) bool { return slices.Contains(h.Datastores, ds) }) {
			far = h.Name
			break
		}
	}
	if far == "" {
		t.Fatalf("every host mounts vm-on's datastores %v", v.Status.Datastores)
	}
	out, errOut, code = run(t, dir, "", "migrate", "vm", "vm-on", "-n", "team-a", "--to", far, "--wait", "25s")
	if code == 0 || !strings.Contains(out+errOut, datastoreavailable.Reason) || !strings.Contains(out+errOut, v.Status.Datastores[0]) {
		t.Errorf("migrate vm vm-on --to %s (which does not mount %v): exit %d\n%s%s; want refused, naming the datastore", far, v.Status.Datastores, code, out, errOut)
	}
	if v := getVM("vm-on"); v.Status.Host != src {
		t.Errorf("vm-on on %s after a refused move, want it still on %s", v.Status.Host, src)
	}

	// A VM that cannot be vMotioned is evicted and made again elsewhere.
	off := getVM("vm-off")
	if err := sys.Datacenter.AddFault(simulator.FaultInjectionRule{MethodName: "RelocateVM_Task", Probability: 1,
		FaultType: simulator.FaultTypeInsufficientResourcesFault}); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := run(t, dir, "", "drain", "host", off.Status.Host, "--wait", "25s"); code != 0 || !strings.Contains(out, "maintenance") {
		t.Fatalf("drain host %s with vMotion failing: exit %d\n%s%s", off.Status.Host, code, out, errOut)
	}
	// The drain ends once the VM left the host; it is made again on its
	// new host meanwhile.
	eventuallyWithin(t, 30*time.Second, "vm-off made again away from "+off.Status.Host, func() bool {
		v := getVM("vm-off")
		return v.Status.Phase == events.VMPhaseReady && v.Status.Host != off.Status.Host && v.Status.VM != "" &&
			v.Status.VM != off.Status.VM && v.Status.PowerState == events.PowerStatePoweredOff
	})
	if h, _ := vcenter(off.Status.VM); h != "" {
		t.Errorf("the VM the eviction left is still in vCenter on %s", h)
	}
	sys.Datacenter.ClearFaults()
	run(t, dir, "", "uncordon", "host", off.Status.Host)

	// Host loss: the powered-on VM is made again on another host, on.
	lost := getVM("vm-on")
	if out, errOut, code := run(t, dir, "", "sim", "host", "fail", lost.Status.Host); code != 0 {
		t.Fatalf("sim host fail: %d %s%s", code, out, errOut)
	}
	var again events.VirtualMachine
	eventuallyWithin(t, 60*time.Second, "the VM made again on another host", func() bool {
		again = getVM("vm-on")
		return again.Status.Host != "" && again.Status.Host != lost.Status.Host && again.Status.VM != "" &&
			again.Status.VM != lost.Status.VM && again.Status.PowerState == events.PowerStatePoweredOn
	})
	if h, p := vcenter(again.Status.VM); h != again.Status.Host || p != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("vCenter: %s on %s (%s), want on %s powered on", again.Status.VM, h, p, again.Status.Host)
	}
	if h, _ := vcenter(lost.Status.VM); h != "" {
		t.Errorf("the VM left on the lost host is still registered in vCenter (on %s)", h)
	}
}
