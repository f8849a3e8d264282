package nativevm_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
)

// An evicted VM is made again from the disks it left, as vSphere HA
// restarts a VM: its host lost, the VM there can be neither powered off nor
// destroyed, so it leaves vCenter's inventory, and the VM made on the new
// host boots from the same disks, with what its guest wrote on them.
func TestAnEvictedVMIsMadeAgainFromItsDisks(t *testing.T) {
	privtest.RequireTools(t, "debugfs")
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	hosts := e.dc.Hosts()
	decl := func(power string) *events.VMDeclared { return withDataDisk(power, "echo boot >> /data/boots") }
	r := e.runOn(decl(events.PowerStatePoweredOn), hosts[0])
	first := e.vm(r)
	e.waitConsole(first.Reference().Value, "init: formatted /dev/sdb", "cloud-config applied")
	data := e.dataDisk(first.Reference().Value)

	if err := e.dc.FailHost(ctx, hosts[0].Name); err != nil {
		t.Fatal(err)
	}
	e.publish(events.OwnerSource(events.TypeVMEvicted), &events.VMEvicted{VMRef: events.VMRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID},
		Host: hosts[0].Name, Reason: "HostLost"})
	r = e.waitRecord("evicted", func(r *events.VMRecord) bool { return r.StaleVM == first.Reference().Value })
	e.place(r, hosts[1])
	r = e.waitRecord("made again on the other host", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.Host == hosts[1].Name && r.StaleVM == "" && r.DisksOn == ""
	})
	again := e.vm(r)
	if again.Reference() == first.Reference() {
		t.Fatalf("the VM was not made again (%s)", again.Reference().Value)
	}
	console := e.waitConsole(again.Reference().Value, "init: /dev/sdb mounted on /data", "cloud-config applied")
	if strings.Contains(console, "init: formatted /dev/sdb") {
		t.Errorf("the data disk was formatted again: it is not the one the VM left\n%s", console)
	}
	if d := e.dataDisk(again.Reference().Value); d != data {
		t.Errorf("the VM made again has the data disk %s, want the one it left (%s)", d, data)
	}

	e.publish("podvisor/cli", decl(events.PowerStatePoweredOff))
	r = e.waitRecord("generation 2", func(r *events.VMRecord) bool { return r.Generation == 2 })
	e.place(r, hosts[1])
	e.waitRecord("powered off", func(r *events.VMRecord) bool { return r.Status.PowerState == events.PowerStatePoweredOff })
	if got, err := exec.Command("debugfs", "-R", "cat /boots", data).Output(); err != nil || string(got) != "boot\nboot\n" {
		t.Errorf("/boots on the data disk = %q (%v), want a line from each boot", got, err)
	}
}
