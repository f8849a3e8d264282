package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/guestchannel"
)

// A standby's mounted disks are the owning VM's only when they are the
// very files its configuration names: a disk file moved to the VM's name
// still is (the hypervisor renames the standby's copies), another file of
// the same name is not, nor are other disks in the spec or another state
// directory.
func TestStandbyDisksAreTheVMsOnlyWhenTheSameFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	eph, img := file("standby-eph"), file("image")
	disks := []guestchannel.Disk{
		{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4", Path: "[ds] template/eph.vmdk"},
		{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:a"},
	}
	s := &standby{boot: guestchannel.BootConfig{StateDir: "/state"}, disks: disks, files: map[string]fileID{}}
	for unit, p := range map[string]string{"scsi0:0": eph, "scsi0:1": img} {
		id, err := identify(p)
		if err != nil {
			t.Fatal(err)
		}
		s.files[unit] = id
	}
	moved := filepath.Join(dir, "child-eph")
	if err := os.Rename(eph, moved); err != nil {
		t.Fatal(err)
	}
	childDisks := append([]guestchannel.Disk(nil), disks...)
	childDisks[0].Path = "[ds] child/eph.vmdk"
	cfg := func(ephPath, state string, ds []guestchannel.Disk) *bootconfig.Config {
		return &bootconfig.Config{
			Boot: guestchannel.BootConfig{StateDir: state, Devices: map[string]string{"scsi0:0": ephPath, "scsi0:1": img}},
			Spec: &guestchannel.PodSpec{Disks: ds},
		}
	}
	if why := s.differs(cfg(moved, "/state", childDisks)); why != "" {
		t.Fatalf("the standby's disk moved to the VM's name: %q, want the same disks", why)
	}
	if why := s.differs(cfg(file("other-eph"), "/state", childDisks)); !strings.Contains(why, "scsi0:0") {
		t.Fatalf("another file as disk 0: %q, want it named", why)
	}
	other := append([]guestchannel.Disk(nil), childDisks...)
	other[1].ChainID = "sha256:b"
	if why := s.differs(cfg(moved, "/state", other)); why == "" {
		t.Fatal("another image in the spec: want a difference")
	}
	if why := s.differs(cfg(moved, "/elsewhere", childDisks)); why == "" {
		t.Fatal("another state directory: want a difference")
	}
}
