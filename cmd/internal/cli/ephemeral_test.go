package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
)

// diskPhase is the agent's console line for its disks (agent main.go).
var diskPhase = regexp.MustCompile(`boot phase.*phase=disks.*formatted=(true|false)`)

// checkDiskZeroFromTemplate checks what a pod VM's disk 0 is on `podvisor
// up`: every pod VM's disk 0 is a child of the datastore's pre-formatted
// ephemeral template (the provisioner's layout), and every guest found it
// formatted (its agent ran no mkfs.ext4) — while the pod's containers run
// on it, which the caller checks.
func checkDiskZeroFromTemplate(t *testing.T, sys *allinone.System, dir string) {
	t.Helper()
	ctx := context.Background()
	c, err := sys.Datacenter.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{"VirtualMachine"}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Destroy(ctx)
	var vms []mo.VirtualMachine
	if err := v.Retrieve(ctx, []string{"VirtualMachine"}, []string{"name", "config.hardware.device"}, &vms); err != nil {
		t.Fatal(err)
	}
	pods := 0
	for _, vm := range vms {
		if !strings.HasPrefix(vm.Name, "pv-") || vm.Config == nil {
			continue
		}
		pods++
		var parent string
		for _, d := range vm.Config.Hardware.Device {
			disk, ok := d.(*types.VirtualDisk)
			if !ok || disk.UnitNumber == nil || *disk.UnitNumber != 0 {
				continue
			}
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && strings.HasSuffix(b.FileName, "/ephemeral.vmdk") && b.Parent != nil {
				parent = b.Parent.FileName
			}
		}
		if want := strings.SplitN(podvm.EphemeralTemplatePath("ds", podvm.DefaultEphemeralDiskMiB), "] ", 2)[1]; !strings.HasSuffix(parent, want) {
			t.Errorf("pod VM %s: disk 0's parent is %q, want the ephemeral template (…%s)", vm.Name, parent, want)
		}
	}
	if pods == 0 {
		t.Fatal("no pod VM in vCenter")
	}
	consoles := 0
	_ = filepath.WalkDir(filepath.Join(dir, "guests"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "console.log" {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, m := range diskPhase.FindAllSubmatch(b, -1) {
			consoles++
			if string(m[1]) != "false" {
				t.Errorf("guest console %s: the agent formatted disk 0 (%s)", p, m[0])
			}
		}
		return nil
	})
	if consoles == 0 {
		t.Error("no guest console shows the agent's disks phase")
	}
}
