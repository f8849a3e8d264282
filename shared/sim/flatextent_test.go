package sim

import (
	"os"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"
)

// A disk moved with MoveVirtualDisk is read from its new extent: vcsim
// renames both files but leaves the descriptor naming the old extent, and
// a guest given the stale name would boot without its disk.
func TestFlatExtentOfAMovedDisk(t *testing.T) {
	ctx, d, vc, dc := startInproc(t)
	fm := object.NewFileManager(vc)
	if err := fm.MakeDirectory(ctx, "["+SharedDatastore+"] moved", dc, true); err != nil {
		t.Fatal(err)
	}
	staged, final := "["+SharedDatastore+"] moved/staged.vmdk", "["+SharedDatastore+"] moved/final.vmdk"
	vdm := object.NewVirtualDiskManager(vc)
	task, err := vdm.CreateVirtualDisk(ctx, staged, dc, &types.FileBackedVirtualDiskSpec{
		VirtualDiskSpec: types.VirtualDiskSpec{DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
		CapacityKb:      1024})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	before, err := d.flatExtent(staged)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(before, []byte("content"), 0o600); err != nil {
		t.Fatal(err)
	}
	task, err = vdm.MoveVirtualDisk(ctx, staged, dc, final, dc, false)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	after, err := d.flatExtent(final)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(after); err != nil || string(b) != "content" {
		t.Fatalf("the moved disk's extent %s: %q, %v; want the content written before the move", after, b, err)
	}
}
