package guest

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A native VM's data disks (its read/write disks other than the boot disk)
// are block devices of its guest, as a VM's SCSI disks are of a Linux
// guest: each is a loop device over the disk's flat extent, with a node
// sdb, sdc, ... in the guest's /dev (a tmpfs of the guest's mount
// namespace). The launcher makes the nodes of the disks the VM has at
// power-on, in unit order. While the guest runs, a reconfigure of the VM
// changes them as vSphere's hot-plug does (hotPlug): a disk added appears
// at once as a new device, a disk removed disappears, a disk grown has its
// new size. The loop devices are detached when their disk is removed or
// the guest stops.

// maxDataDisks is how many data disks a native guest has devices for:
// sdb..sdz.
const maxDataDisks = 25

// guestDevWait bounds how long a hot-plug waits for a guest that has just
// started to have its /dev (guestDev).
const guestDevWait = 10 * time.Second

// dataDisk is one data disk as a native guest has it.
type dataDisk struct {
	Disk
	// loop is the loop device over the disk's extent, /dev/loop7.
	loop string
	// name is the disk's block device in the guest, sdb.
	name string
}

// dataDisks are a native guest's data disks. A reconfigure of the running
// VM changes them (hotPlug) and the guest's stop lets them go (release):
// mu orders the two. It is taken before the manager's lock, never while
// holding it.
type dataDisks struct {
	mu       sync.Mutex
	attached []dataDisk
	// released: the guest stopped and its loop devices are detached; a
	// reconfigure that comes later changes nothing.
	released bool
}

// dataDisksOf lists a native VM's data disks in unit order.
func dataDisksOf(vm VM) []Disk {
	var out []Disk
	for _, d := range vm.Disks {
		if !d.ReadOnly && d.Path != vm.Native.BootDisk {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b Disk) int { return strings.Compare(a.Unit, b.Unit) })
	return out
}

// attachDataDisks gives each data disk of a native VM a loop device, in
// unit order: the guest sees them as block devices sdb, sdc, ... (the boot
// disk is sda), as a Linux guest sees a VM's SCSI disks at boot. It
// returns them and the guest's name:major:minor of each, for the launcher.
func attachDataDisks(vm VM) (*dataDisks, []string, error) {
	ds := &dataDisks{}
	var devs []string
	for _, d := range dataDisksOf(vm) {
		if len(ds.attached) == maxDataDisks {
			break
		}
		loop, rdev, err := attachLoop(d)
		if err != nil {
			ds.release(nil)
			return nil, nil, err
		}
		name := fmt.Sprintf("sd%c", 'b'+len(ds.attached))
		ds.attached = append(ds.attached, dataDisk{Disk: d, loop: loop, name: name})
		devs = append(devs, fmt.Sprintf("%s:%d:%d", name, unix.Major(rdev), unix.Minor(rdev)))
	}
	return ds, devs, nil
}

// attachLoop makes a loop device over a disk's extent and returns it with
// its device number.
func attachLoop(d Disk) (string, uint64, error) {
	out, err := exec.Command("losetup", "--find", "--show", d.Path).Output()
	if err != nil {
		return "", 0, fmt.Errorf("disk %s: losetup: %w", d.Unit, err)
	}
	loop := strings.TrimSpace(string(out))
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		detachLoops([]string{loop}, nil)
		return "", 0, fmt.Errorf("disk %s: %w", d.Unit, err)
	}
	return loop, st.Rdev, nil
}

// detachLoops lets the loop devices of a guest's data disks go (a device
// still in use is detached by the kernel once its last user closes it).
func detachLoops(loops []string, log *slog.Logger) {
	for _, l := range loops {
		if out, err := exec.Command("losetup", "--detach", l).CombinedOutput(); err != nil && log != nil {
			log.Warn("detach a data disk's loop device", "loop", l, "err", err, "output", strings.TrimSpace(string(out)))
		}
	}
}

// release detaches the loop devices of a stopped guest's data disks; the
// guest's nodes and mounts of them went with its mount namespace. It is
// safe to call twice (the guest's stop and the watch of its exit both
// call it).
func (ds *dataDisks) release(log *slog.Logger) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.released {
		return
	}
	ds.released = true
	loops := make([]string, 0, len(ds.attached))
	for _, d := range ds.attached {
		loops = append(loops, d.loop)
	}
	detachLoops(loops, log)
	ds.attached = nil
}

// hotPlug applies a reconfigure of a running native VM to its guest's data
// disks, as vSphere's hot-plug does and a Linux guest sees it: a disk
// added (created, or an existing file attached) gets a loop device and a
// node under the lowest free name, as the kernel names a new SCSI disk (a
// disk removed leaves its name free; the others keep theirs); a disk
// removed loses its node and its loop device (a guest still holding it,
// mounted, keeps the device until it lets go, as a guest using a disk
// pulled from it gets errors, not its data back); a disk grown is extended
// and its loop device takes the new size at once, where a guest on
// vSphere sees it after a rescan. Disks are told apart by their extent
// file. The boot disk is the guest's root, not one of its devices: it
// grows at the next boot. Info.VM.Disks are vm's disks afterwards.
func (m *Manager) hotPlug(g *guest, vm VM) error {
	ds := g.disks
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if ds.released {
		return nil
	}
	want := dataDisksOf(vm)
	wanted := map[string]Disk{}
	for _, d := range want {
		wanted[d.Path] = d
	}
	log := m.log.With("vm", vm.Name)
	var errs []error
	var dev string
	guestDevOnce := func() (string, error) {
		if dev != "" {
			return dev, nil
		}
		var err error
		dev, err = guestDev(g)
		return dev, err
	}
	kept := ds.attached[:0]
	have := map[string]bool{}
	for _, a := range ds.attached {
		d, ok := wanted[a.Path]
		if !ok {
			if err := unplug(a, guestDevOnce, log); err != nil {
				errs = append(errs, err)
				kept = append(kept, a) // still the guest's: removed at the next reconfigure
			}
			continue
		}
		if d.CapacityBytes > a.CapacityBytes {
			if err := grow(d, a.loop); err != nil {
				errs = append(errs, err)
			} else {
				a.CapacityBytes = d.CapacityBytes
			}
		}
		kept = append(kept, a)
		have[a.Path] = true
	}
	ds.attached = kept
	for _, d := range want {
		if have[d.Path] {
			continue
		}
		a, err := m.plug(d, ds.attached, guestDevOnce, log)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ds.attached = append(ds.attached, a)
	}
	m.mu.Lock()
	g.vm.Disks = slices.Clone(vm.Disks)
	m.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("guest of %s: %w", vm.Name, err)
	}
	return nil
}

// plug hot-adds a data disk: its extent made ready as for a boot, a loop
// device over it, and its node in the guest's /dev under the lowest name
// none of the attached disks has.
func (m *Manager) plug(d Disk, attached []dataDisk, guestDev func() (string, error), log *slog.Logger) (dataDisk, error) {
	taken := map[string]bool{}
	for _, a := range attached {
		taken[a.name] = true
	}
	var name string
	for i := range maxDataDisks {
		if n := fmt.Sprintf("sd%c", 'b'+i); !taken[n] {
			name = n
			break
		}
	}
	if name == "" {
		return dataDisk{}, fmt.Errorf("disk %s: the guest has %d data disks, no device name is left", d.Unit, maxDataDisks)
	}
	dev, err := guestDev()
	if err != nil {
		return dataDisk{}, fmt.Errorf("disk %s: %w", d.Unit, err)
	}
	if err := m.bases.materialize(d.Path, d.Parent); err != nil {
		return dataDisk{}, fmt.Errorf("disk %s: %w", d.Unit, err)
	}
	if err := extend(d.Path, d.CapacityBytes); err != nil {
		return dataDisk{}, fmt.Errorf("disk %s: %w", d.Unit, err)
	}
	loop, rdev, err := attachLoop(d)
	if err != nil {
		return dataDisk{}, err
	}
	if err := unix.Mknod(filepath.Join(dev, name), unix.S_IFBLK|0o660, int(rdev)); err != nil {
		detachLoops([]string{loop}, log)
		return dataDisk{}, fmt.Errorf("disk %s: device node %s in the guest: %w", d.Unit, name, err)
	}
	log.Info("disk hot-added", "disk", d.Unit, "device", name, "loop", loop)
	return dataDisk{Disk: d, loop: loop, name: name}, nil
}

// unplug hot-removes a data disk: its node in the guest's /dev, then its
// loop device. When the node cannot go (the guest has no /dev of its own
// yet) the loop device stays attached and the disk with the guest, for
// the next reconfigure to remove: a loop device detached under a node the
// guest keeps would be handed to the next disk attached, another VM's.
func unplug(a dataDisk, guestDev func() (string, error), log *slog.Logger) error {
	dev, err := guestDev()
	if err == nil {
		if err = os.Remove(filepath.Join(dev, a.name)); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("disk %s: device node %s in the guest (the disk stays attached): %w", a.Unit, a.name, err)
	}
	detachLoops([]string{a.loop}, log)
	log.Info("disk hot-removed", "disk", a.Unit, "device", a.name, "loop", a.loop)
	return nil
}

// grow extends a data disk's extent to its new capacity and has its loop
// device take the new size.
func grow(d Disk, loop string) error {
	if err := extend(d.Path, d.CapacityBytes); err != nil {
		return fmt.Errorf("disk %s: %w", d.Unit, err)
	}
	if out, err := exec.Command("losetup", "--set-capacity", loop).CombinedOutput(); err != nil {
		return fmt.Errorf("disk %s: losetup --set-capacity: %w: %s", d.Unit, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// guestDev is a running native guest's /dev as this process reaches it
// (through /proc/<pid>/root), once the launcher has made it and chrooted
// into the boot disk. A guest's boot ends when its launcher is let go, a
// moment before that: until the chroot the guest's root is the host's,
// and a node made under it would be the host's.
func guestDev(g *guest) (string, error) {
	root := filepath.Join("/proc", strconv.Itoa(g.cmd.Process.Pid), "root")
	var host unix.Stat_t
	if err := unix.Stat("/", &host); err != nil {
		return "", err
	}
	deadline := time.Now().Add(guestDevWait)
	for {
		var st unix.Stat_t
		var fs unix.Statfs_t
		if unix.Stat(root, &st) == nil && (st.Dev != host.Dev || st.Ino != host.Ino) &&
			unix.Statfs(filepath.Join(root, "dev"), &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
			return filepath.Join(root, "dev"), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the guest has no /dev of its own after %v", guestDevWait)
		}
		select {
		case <-g.exited:
			return "", errors.New("the guest stopped")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
