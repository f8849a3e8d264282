package qemutest

import (
	"context"
	"os"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/podvm/qemu"
)

// ChainID is the chain of the busybox image disk Disks makes.
const ChainID = qemu.ChainID

// Require skips the test, or fails it where root tests must run, unless
// QEMU and what the image's build needs are here.
func Require(t *testing.T) {
	t.Helper()
	privtest.RequireTools(t, qemu.Tools...)
	if _, err := os.Stat(qemu.BIOS); err != nil {
		privtest.RequireTools(t, "seabios (the BIOS QEMU boots the disk with)")
	}
}

// Disks are a pod VM's disks, made in a test's directory.
type Disks = qemu.Disks

// MakeDisks builds the boot image and the pod VM's disks in dir, the
// configuration disk holding guestinfo.
func MakeDisks(t *testing.T, dir string, guestinfo map[string]string) Disks {
	t.Helper()
	d, err := qemu.MakeDisks(dir, guestinfo)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Machine is a running QEMU, killed when the test ends.
type Machine struct {
	*qemu.Machine
}

// Boot starts QEMU on the disks (qemu.Boot): the first serial port is the
// console; the second, the guest channel, is what channel says (QEMU
// arguments: a -serial option and whatever it refers to). QEMU is killed
// when the test ends, its RAM's file removed, and its output and the
// console logged if the test failed.
func Boot(t *testing.T, ctx context.Context, dir string, d Disks, channel ...string) *Machine {
	t.Helper()
	m, err := qemu.Boot(ctx, dir, d, channel...)
	if err != nil {
		t.Fatal(err)
	}
	return closeAtEnd(t, m)
}

// Fork makes a child of m as vSphere's instant clone of a frozen parent
// (VMFork) does (qemu.Machine.Fork): m stays frozen, the child's
// template; the child's files go in dir, its configuration disk holds
// guestinfo, and extra are its further arguments (its channel). The
// fork's steps are logged.
func (m *Machine) Fork(t *testing.T, ctx context.Context, dir string, guestinfo map[string]string, extra ...string) *Machine {
	t.Helper()
	c, err := m.Machine.Fork(ctx, dir, guestinfo, extra...)
	if err != nil {
		t.Fatal(err)
	}
	f := c.Forked
	t.Logf("fork: parent stopped and its disk copied %.2f s, its state saved %.2f s (%d KiB, its RAM left in shared memory), "+
		"the child started and loaded %.2f s", f.Stopped.Seconds(), f.Saved.Seconds(), f.StateBytes>>10, f.Loaded.Seconds())
	return closeAtEnd(t, c)
}

// closeAtEnd closes m when the test ends (its children first: they were
// made after it), logging QEMU's output and the console if the test
// failed.
func closeAtEnd(t *testing.T, m *qemu.Machine) *Machine {
	t.Cleanup(func() {
		_ = m.Close()
		if t.Failed() {
			b, _ := os.ReadFile(m.Console)
			t.Logf("qemu: %s\nconsole:\n%s", m.Output(), b)
		}
	})
	return &Machine{Machine: m}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
