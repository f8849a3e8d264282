package install

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func setup(t *testing.T) (*vsphere.Session, string) {
	t.Helper()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := vsphere.Connect(ctx, vsphere.Config{URL: d.URL().String(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	// A boot image as make podvm-image writes it (the content does not
	// matter to install: its digest names what it makes).
	img := t.TempDir()
	if err := os.WriteFile(filepath.Join(img, flatFile), []byte(strings.Repeat("boot", 1<<16)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, descriptorFile), []byte("# Disk DescriptorFile\nRW 512 VMFS \"podvm-flat.vmdk\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return s, img
}

func TestInstallCreatesThenChangesNothing(t *testing.T) {
	s, img := setup(t)
	ctx := context.Background()
	done, err := Install(ctx, s, Options{ImageDir: img})
	if err != nil {
		t.Fatal(err)
	}
	steps := done.Steps
	if len(steps) != 4 {
		t.Fatalf("steps %v, want folder, two files, template", steps)
	}
	for _, st := range steps {
		if !st.Changed {
			t.Errorf("fresh vCenter: %s was found done", st)
		}
	}
	tmplPath := strings.TrimPrefix(steps[3].What, "template ")
	vm, err := s.Finder.VirtualMachine(ctx, tmplPath)
	if err != nil {
		t.Fatalf("template %s: %v", tmplPath, err)
	}
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"config"}, &m); err != nil {
		t.Fatal(err)
	}
	if !m.Config.Template {
		t.Error("the VM is not marked as a template")
	}
	devices := object.VirtualDeviceList(m.Config.Hardware.Device)
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 || disks[0].GetVirtualDevice().Backing.(*types.VirtualDiskFlatVer2BackingInfo).FileName != done.BootDisk {
		t.Fatalf("template disks %v, want the boot disk %s", disks, done.BootDisk)
	}
	if d := disks[0].GetVirtualDevice(); d.UnitNumber == nil || *d.UnitNumber != 0 {
		t.Errorf("boot disk at unit %v, want 0", d.UnitNumber)
	} else if _, ok := devices.FindByKey(d.ControllerKey).(*types.VirtualAHCIController); !ok {
		t.Errorf("boot disk on %s, want the SATA controller", devices.Name(devices.FindByKey(d.ControllerKey)))
	}
	if !regexp.MustCompile(`^\[[^]]+\] podvisor/boot-[0-9a-f]{12}/podvm\.vmdk$`).MatchString(done.BootDisk) {
		t.Errorf("boot disk %q, want [DS] podvisor/boot-<digest12>/podvm.vmdk", done.BootDisk)
	}
	extra := map[string]any{}
	for _, o := range m.Config.ExtraConfig {
		extra[o.GetOptionValue().Key] = o.GetOptionValue().Value
	}
	if extra[podvm.BootOrderKey] != "hdd" || extra[podvm.HDDOrderKey] != "sata0:0" {
		t.Errorf("template boot order %v / %v, want hdd from sata0:0", extra[podvm.BootOrderKey], extra[podvm.HDDOrderKey])
	}
	if len(devices.SelectByType((*types.ParaVirtualSCSIController)(nil))) != 1 {
		t.Error("the template has no paravirtual SCSI controller for the pod's disks")
	}

	second, err := Install(ctx, s, Options{ImageDir: img})
	if err != nil {
		t.Fatal(err)
	}
	if second.BootDisk != done.BootDisk {
		t.Errorf("second run's boot disk %s, first %s", second.BootDisk, done.BootDisk)
	}
	for i, st := range second.Steps {
		if st.Changed || st.What != steps[i].What {
			t.Errorf("second run: %s (first run: %s)", st, steps[i])
		}
	}
	vms, err := s.Finder.VirtualMachineList(ctx, "*")
	if err != nil || len(vms) != 1 {
		t.Fatalf("VMs after two runs: %v (%v), want the one template", vms, err)
	}
}

func TestInstallListsWhatIsMissing(t *testing.T) {
	s, img := setup(t)
	_, err := Install(context.Background(), s, Options{ImageDir: img, Datastore: "no-such-datastore"})
	if !errors.Is(err, ErrPrerequisites) || !strings.Contains(err.Error(), `"no-such-datastore" is not an accessible datastore`) {
		t.Fatalf("err = %v, want the missing datastore listed", err)
	}
	vms, _ := s.Finder.VirtualMachineList(context.Background(), "*")
	if len(vms) != 0 {
		t.Fatalf("a failed check created %v", vms)
	}
	if _, err := Install(context.Background(), s, Options{ImageDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "make podvm-image") {
		t.Fatalf("no image: err = %v", err)
	}
}

func TestAtLeast(t *testing.T) {
	for v, want := range map[string]bool{"8.0.2": true, "7.0": true, "7.0.3": true, "6.7.0": false, "10.0": true, "x": false} {
		if atLeast(v, MinVersion) != want {
			t.Errorf("atLeast(%s) != %v", v, want)
		}
	}
}
