package provisioner

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
)

// Disk 0 of a pod VM is a child of the datastore's pre-formatted ephemeral
// template, built once: its flat extent is an ext4 filesystem of disk 0's
// capacity (what a guest mounts without formatting it). With the template
// turned off, disk 0 is created blank.
func TestDiskZeroIsAChildOfTheEphemeralTemplate(t *testing.T) {
	// The template is built with mkfs.ext4 and checked with e2fsck and
	// dumpe2fs (e2fsprogs): a failure in CI, not a skip, without them.
	privtest.RequireTools(t, "mkfs.ext4", "e2fsck", "dumpe2fs")
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host := e.DC.Hosts()[0].Name
	place := podvm.Placement{Host: host, Folder: "podvisor/ephemeral"}
	const mib = 256
	create := func(vms *podvm.Client, name string) *types.VirtualDiskFlatVer2BackingInfo {
		t.Helper()
		task, err := vms.StartCreate(ctx, podvm.Spec{Name: name, VCPUs: 1, MemoryMiB: 128, EphemeralDiskMiB: mib,
			ImageDisks: []string{imageDisk("app")}}, place)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		ref, err := vms.WaitCreate(ctx, task)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		var m mo.VirtualMachine
		if err := object.NewVirtualMachine(e.vc.Client, ref).Properties(ctx, ref, []string{"config.hardware.device"}, &m); err != nil {
			t.Fatal(err)
		}
		for _, d := range m.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok && *disk.UnitNumber == 0 {
				if disk.CapacityInKB != mib<<10 {
					t.Errorf("%s: disk 0 of %d KiB, want %d", name, disk.CapacityInKB, mib<<10)
				}
				return disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
			}
		}
		t.Fatalf("%s has no disk 0", name)
		return nil
	}

	vms := podvm.New(e.vc.Client, e.dco)
	want := podvm.EphemeralTemplatePath(sim.SharedDatastore, mib)
	ds, err := e.DC.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(ds.Dir, strings.SplitN(want, "] ", 2)[1])

	// The first create starts the build and does not wait for it.
	if b := create(vms, "pv-eph-0"); b.Parent != nil && b.Parent.FileName != want {
		t.Fatalf("disk 0 has parent %s, want none or %s", b.Parent.FileName, want)
	}
	if got, err := vms.EphemeralTemplate(ctx, sim.SharedDatastore, mib); err != nil || got != want {
		t.Fatalf("EphemeralTemplate = %q, %v; want %s", got, err, want)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(local), "ready")); err != nil {
		t.Errorf("the template has no ready marker: %v", err)
	}
	for _, name := range []string{"pv-eph-1", "pv-eph-2"} {
		b := create(vms, name)
		if b.Parent == nil || b.Parent.FileName != want {
			t.Fatalf("%s: disk 0 %s has parent %+v, want %s", name, b.FileName, b.Parent, want)
		}
		if b.FileName != podvm.EphemeralDiskPath(sim.SharedDatastore, name) {
			t.Errorf("%s: disk 0 is %s, want it in the VM's directory", name, b.FileName)
		}
	}

	// The template on the datastore: an ext4 filesystem of the capacity,
	// as a guest reads it (the extent's head, zeros after it).
	flat := strings.TrimSuffix(local, ".vmdk") + "-flat.vmdk"
	if fi, err := os.Stat(flat); err != nil || fi.Size() > mib<<20/256+3<<20 {
		t.Errorf("the template's extent holds %v bytes (%v), want only the format's head (≤ %d)", fi.Size(), err, mib<<20/256+3<<20)
	}
	img := filepath.Join(t.TempDir(), "disk0.img")
	if out, err := exec.Command("cp", "--sparse=always", flat, img).CombinedOutput(); err != nil {
		t.Fatalf("copy the template: %v: %s", err, out)
	}
	if err := os.Truncate(img, mib<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Errorf("e2fsck of the template: %v\n%s", err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", img).Output()
	if err != nil {
		t.Fatalf("dumpe2fs of the template: %v", err)
	}
	var blocks, size int64
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "Block count:"):
			blocks, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		case strings.HasPrefix(l, "Block size:"):
			size, _ = strconv.ParseInt(f[len(f)-1], 10, 64)
		}
	}
	if blocks*size != mib<<20 || !strings.Contains(string(out), "encrypt") || !strings.Contains(string(out), "has_journal") {
		t.Errorf("the template is %d blocks of %d bytes, want %d MiB with features encrypt and has_journal:\n%s", blocks, size, mib, out)
	}

	// Turned off: a blank disk 0, no parent.
	blank := podvm.New(e.vc.Client, e.dco)
	blank.BlankEphemeral = true
	if b := create(blank, "pv-eph-3"); b.Parent != nil {
		t.Errorf("with BlankEphemeral, disk 0 has parent %s", b.Parent.FileName)
	}
}

// Two provisioner replicas building one datastore's ephemeral template at
// once both end with the same template and leave nothing else behind: each
// writes only a disk of its own and moves it to the template's name, and a
// move never replaces a template (pod VMs may already be its children).
// Before, a build deleted whatever disk had the template's name, another
// replica's finished template included.
func TestTwoReplicasBuildOneEphemeralTemplate(t *testing.T) {
	privtest.RequireTools(t, "mkfs.ext4")
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const mib = 128
	want := podvm.EphemeralTemplatePath(sim.SharedDatastore, mib)
	replicas := []*podvm.Client{podvm.New(e.vc.Client, e.dco), podvm.New(e.vc.Client, e.dco)}
	errs := make(chan error, len(replicas))
	for _, vms := range replicas {
		go func() {
			got, err := vms.EphemeralTemplate(ctx, sim.SharedDatastore, mib)
			if err == nil && got != want {
				err = fmt.Errorf("template %s, want %s", got, want)
			}
			errs <- err
		}()
	}
	for range replicas {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ds, err := e.DC.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(ds.Dir, strings.SplitN(want, "] ", 2)[1])
	entries, err := os.ReadDir(filepath.Dir(local))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"ephemeral-flat.vmdk", "ephemeral.vmdk", "ready"}) {
		t.Fatalf("the template's directory holds %v, want the template's two files and its marker", names)
	}
	flat := strings.TrimSuffix(local, ".vmdk") + "-flat.vmdk"
	if fi, err := os.Stat(flat); err != nil || fi.Size() == 0 {
		t.Fatalf("the template's extent: %v, %v; want the formatted head", fi, err)
	}
}
