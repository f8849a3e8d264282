package vmboot

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sysfs lays out the parts of /sys that SCSIUnits reads, the way the kernel
// links them: class/scsi_host/hostN → the controller's PCI device,
// class/scsi_disk/H:C:T:L/device/block/sdX.
func sysfs(t *testing.T, hosts map[int][2]string, disks map[string]string) (sys, dev string) {
	t.Helper()
	root := t.TempDir()
	sys, dev = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	mk := func(p string) {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk(dev)
	mk(filepath.Join(sys, "class/scsi_host"))
	for n, h := range hosts { // h = {driver, pci path}
		pci := filepath.Join(sys, "devices", h[1], "host"+itoa(n))
		mk(pci)
		if err := os.WriteFile(filepath.Join(pci, "proc_name"), []byte(h[0]+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(pci, filepath.Join(sys, "class/scsi_host", "host"+itoa(n))); err != nil {
			t.Fatal(err)
		}
	}
	for hctl, blk := range disks {
		mk(filepath.Join(sys, "class/scsi_disk", hctl, "device/block", blk))
		if err := os.WriteFile(filepath.Join(dev, blk), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sys, dev
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestSCSIUnits(t *testing.T) {
	sys, dev := sysfs(t,
		map[int][2]string{
			0: {"ata_piix", "pci0000:00/0000:00:07.1"},   // IDE: boot and config disks
			2: {"vmw_pvscsi", "pci0000:00/0000:00:16.0"}, // scsi1, probed first
			3: {"vmw_pvscsi", "pci0000:00/0000:00:15.0"}, // scsi0
		},
		map[string]string{
			"0:0:0:0": "sda", // boot disk on IDE: no unit
			"3:0:0:0": "sdb",
			"3:0:1:0": "sdc",
			"2:0:0:0": "sdd",
			"3:0:2:1": "sde", // LUN 1: not a vSphere unit
		})
	got, err := SCSIUnits(sys, dev)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"scsi0:0": "sdb", "scsi0:1": "sdc", "scsi1:0": "sdd"}
	if len(got) != len(want) {
		t.Fatalf("units %v, want %v", got, want)
	}
	for u, blk := range want {
		if got[u] != filepath.Join(dev, blk) {
			t.Errorf("%s → %s, want %s", u, got[u], blk)
		}
	}
}

func TestWaitUnitsNamesWhatIsMissing(t *testing.T) {
	sys, dev := sysfs(t, map[int][2]string{0: {"virtio_scsi", "pci0000:00/0000:00:04.0"}}, map[string]string{"0:0:0:0": "sda"})
	got, err := WaitUnits(sys, dev, []string{"scsi0:0"}, time.Second)
	if err != nil || got["scsi0:0"] != filepath.Join(dev, "sda") {
		t.Fatalf("WaitUnits = %v, %v", got, err)
	}
	_, err = WaitUnits(sys, dev, []string{"scsi0:0", "scsi0:3"}, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "scsi0:3") || strings.Contains(err.Error(), "disks scsi0:0") {
		t.Fatalf("err = %v, want one naming scsi0:3 alone", err)
	}
}

func TestRootIsRootfs(t *testing.T) {
	initramfs := "1 1 0:2 / / rw - rootfs rootfs rw,size=249124k\n22 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n"
	switched := "1 1 0:2 / / rw - rootfs rootfs rw\n25 1 0:21 / / rw - tmpfs tmpfs rw,mode=755\n"
	chrooted := "25 24 0:21 / / rw - tmpfs tmpfs rw,mode=755\n26 25 0:22 / /proc rw - proc proc rw\n"
	if !rootIsRootfs(initramfs) || rootIsRootfs(switched) || rootIsRootfs(chrooted) {
		t.Fatal("rootfs misjudged")
	}
}
