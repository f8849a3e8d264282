package provisioner

import (
	"context"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// With a boot disk configured (what `podvisor install` uploads), every pod
// VM gets it on SATA 0:0, shared read-only, and boots from it: against a
// real vCenter a pod VM without it has no operating system.
func TestPodVMsBootFromTheBootDisk(t *testing.T) {
	e := newEnv(t)
	const boot = "[shared-ds] podvisor/boot-0123456789ab/podvm.vmdk"
	simtest.CreateDisks(t, e.vc, e.dco, "[shared-ds] podvisor/boot-0123456789ab", boot)
	cfg := testConfig()
	cfg.BootDisk = boot
	e.start(cfg)
	_, run := e.provision(testPod("booted"), e.DC.Hosts()[0].Name)

	var vm mo.VirtualMachine
	if err := e.vc.RetrieveOne(context.Background(), vmRef(run.VM), []string{"config.hardware.device", "config.extraConfig"}, &vm); err != nil {
		t.Fatal(err)
	}
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	var found *types.VirtualDisk
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.FileName == boot {
			found = disk
			if b.DiskMode != string(types.VirtualDiskModeIndependent_nonpersistent) {
				t.Errorf("boot disk mode %s, want independent_nonpersistent", b.DiskMode)
			}
		}
	}
	if found == nil {
		t.Fatalf("no disk backed by %s; devices: %v", boot, devices)
	}
	if _, ok := devices.FindByKey(found.ControllerKey).(*types.VirtualAHCIController); !ok || found.UnitNumber == nil || *found.UnitNumber != 0 {
		t.Errorf("boot disk on %s unit %v, want SATA unit 0", devices.Name(devices.FindByKey(found.ControllerKey)), found.UnitNumber)
	}
	extra := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		v := o.GetOptionValue()
		extra[v.Key], _ = v.Value.(string)
	}
	if extra["bios.bootOrder"] != "hdd" || extra["bios.hddOrder"] != "sata0:0" {
		t.Errorf("bios.bootOrder %q, bios.hddOrder %q: want the BIOS to boot the hard disk sata0:0", extra["bios.bootOrder"], extra["bios.hddOrder"])
	}
}

// A boot disk that is not on the datastore (not uploaded yet, misspelled,
// the prod overlay's placeholder) stops the provisioner at start, naming
// the setting and the path, rather than failing every pod VM's create.
func TestAMissingBootDiskStopsTheProvisioner(t *testing.T) {
	e := newEnv(t)
	for _, disk := range []string{
		"[shared-ds] podvisor/boot-000000000000/podvm.vmdk", // no such file
		"[no-such-ds] podvisor/boot-0123456789ab/podvm.vmdk",
	} {
		cfg := testConfig()
		cfg.BootDisk = disk
		_, err := New(cfg, Deps{Bus: e.Bus, VSphere: e.sess, Logger: testenv.Logger()})
		if err == nil || !strings.Contains(err.Error(), EnvBootDisk) || !strings.Contains(err.Error(), disk[1:strings.Index(disk, "]")]) {
			t.Errorf("boot disk %s: New = %v, want an error naming %s and the datastore", disk, err, EnvBootDisk)
		}
	}
}

// A pod placed on a host that does not mount the boot disk's datastore
// fails, its message naming the host and the datastore, rather than with
// the fault vCenter's create would give about a file.
func TestAHostWithoutTheBootDisksDatastoreIsNamed(t *testing.T) {
	e := newEnv(t)
	ds := sim.ClusterDatastore(e.DC.Clusters()[0].Name)
	boot := "[" + ds + "] podvisor/boot-0123456789ab/podvm.vmdk"
	simtest.CreateDisks(t, e.vc, e.dco, "["+ds+"] podvisor/boot-0123456789ab", boot)
	cfg := testConfig()
	cfg.BootDisk = boot
	e.start(cfg)
	host := e.DC.Hosts()[0].Name
	acc := e.request(testPod("elsewhere"))
	e.facts(acc, host) // the placement lists only the shared datastore
	failed := testenv.Wait(e.Env, func(p *events.PodFailed) bool { return p.UID == acc.UID })
	for _, want := range []string{host, ds, "boot disk"} {
		if !strings.Contains(failed.Message, want) {
			t.Errorf("pod.failed message %q does not name %q", failed.Message, want)
		}
	}
	if vms := e.vmsNamed("pv-" + acc.UID); len(vms) != 0 {
		t.Errorf("a VM was made: %v", vms)
	}
}
