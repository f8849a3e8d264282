// Command podvm-init is /init of the pod VM boot image: the kernel runs it
// as PID 1 from the initramfs. It prepares the VM (package vmboot: root on
// tmpfs, pseudo filesystems, kernel modules, guestinfo, disk devices),
// writes the agent's boot configuration and executes the agent in its
// place, so the agent runs as PID 1 exactly as in a simulated guest.
//
// It never returns: PID 1 exiting panics the kernel, so on a failure it
// says why on the console and powers the VM off.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/source"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// Paths in the image (written by the image build).
const (
	agentPath   = "/sbin/podvm-agent"
	modulesDir  = "/lib/modules"
	modulesList = "/etc/podvisor/modules"
	newRoot     = "/.root"
)

func main() {
	if err := run(); err != nil {
		say("failed: %v", err)
		if os.Getpid() == 1 {
			unix.Sync()
			_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		}
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "podvm-init [%ss]: %s\n", vmboot.Uptime(), fmt.Sprintf(format, args...))
}

func run() error {
	if os.Getpid() != 1 {
		return fmt.Errorf("podvm-init runs as PID 1 of a pod VM, not as pid %d", os.Getpid())
	}
	if err := vmboot.Console(); err != nil {
		return err
	}
	onRootfs, err := vmboot.OnRootfs()
	if err != nil {
		return err
	}
	if onRootfs {
		say("moving the root from the initramfs to a tmpfs")
		// Start again from a tmpfs root so that the OCI runtime can pivot.
		if err := vmboot.SwitchRoot(newRoot); err != nil {
			return err
		}
		return unix.Exec("/init", os.Args, os.Environ())
	}
	// The kernel starts init without PATH; the agent runs the OCI runtime
	// and mkfs.ext4 by name.
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if err := vmboot.MountPseudo(); err != nil {
		return err
	}
	say("loading kernel modules")
	n, err := vmboot.LoadModules(filepath.Join(modulesDir, uname()), modulesList)
	if err != nil {
		return err
	}
	say("root on tmpfs, %d kernel modules loaded", n)

	// Disks (a configuration disk among them) appear while the SCSI and
	// ATA buses are scanned: look for the guestinfo for a while.
	var src source.Source
	deadline := time.Now().Add(30 * time.Second)
	for {
		src, err = source.First(
			source.Guestinfo,
			func() (source.Source, error) { return source.ConfigDisk("/sys/block", "/dev") },
		)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	// vsock reaches the host only through VMware's VMCI device: the vsock
	// module alone (loaded in every pod VM) makes /dev/vsock without it.
	vmci, _ := filepath.Glob("/sys/bus/pci/drivers/vmw_vmci/0000:*")
	bc, err := vmboot.Compose(vmboot.Env{
		Source:      src,
		HasVsock:    len(vmci) > 0,
		DMIUUID:     vmboot.ReadDMIUUID("/sys"),
		Sys:         "/sys",
		Dev:         "/dev",
		DiskTimeout: 60 * time.Second,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(bc.StateDir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(bc, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(vmboot.BootConfig, b, 0o600); err != nil {
		return err
	}
	say("guestinfo from %s, channel %s, %d disks; starting the agent", src.Name(), bc.Channel, len(bc.Devices))
	return unix.Exec(agentPath, []string{agentPath, "--boot-config", vmboot.BootConfig}, os.Environ())
}

func uname() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
