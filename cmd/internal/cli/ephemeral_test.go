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
// up`: a child of the datastore's pre-formatted ephemeral template (the
// provisioner's layout) once the template is built — the first pod VM,
// created while it is built, gets a blank disk 0 — and a guest formats its
// disk 0 (mkfs.ext4 in its agent) only when it is blank. At least one pod
// VM running now must have had its disk 0 from the template.
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
	template := strings.SplitN(podvm.EphemeralTemplatePath("ds", podvm.DefaultEphemeralDiskMiB), "] ", 2)[1]
	fromTemplate := 0
	for _, vm := range vms {
		if !strings.HasPrefix(vm.Name, "pv-") || vm.Config == nil {
			continue
		}
		var parent string
		for _, d := range vm.Config.Hardware.Device {
			disk, ok := d.(*types.VirtualDisk)
			if !ok || disk.UnitNumber == nil || *disk.UnitNumber != 0 {
				continue
			}
			if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.Parent != nil {
				parent = b.Parent.FileName
			}
		}
		if parent != "" && !strings.HasSuffix(parent, template) {
			t.Errorf("pod VM %s: disk 0's parent is %s, want the ephemeral template (…%s)", vm.Name, parent, template)
		}
		console, err := os.ReadFile(filepath.Join(dir, "guests", vm.Self.Value, "console.log"))
		if err != nil {
			continue // no guest now (powered off)
		}
		m := diskPhase.FindSubmatch(console)
		if m == nil {
			t.Errorf("pod VM %s: its guest's console shows no disks phase", vm.Name)
			continue
		}
		if formatted := string(m[1]) == "true"; formatted != (parent == "") {
			t.Errorf("pod VM %s: disk 0 parent %q, and the agent formatted it: %v", vm.Name, parent, formatted)
		}
		if parent != "" {
			fromTemplate++
		}
	}
	if fromTemplate == 0 {
		t.Error("no running pod VM has its disk 0 from the ephemeral template")
	}
}
