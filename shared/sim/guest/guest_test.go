package guest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/privtest"
)

// newTestManager starts a manager whose guests run the probe
// (testdata/probe) in a short temporary directory.
func newTestManager(t *testing.T) *Manager {
	t.Helper()
	privtest.Require(t, "simulated guests run in namespaces and cgroups")
	base, err := os.MkdirTemp("", "pvg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	probe := filepath.Join(base, "probe")
	cmd := exec.Command("go", "build", "-o", probe, "./testdata/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v: %s", err, out)
	}
	m, err := New(Config{Agent: probe, ChannelDir: filepath.Join(base, "ch"), Dir: filepath.Join(base, "g"), StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// testVM is a pod VM with one small read/write disk.
func testVM(t *testing.T, n int) VM {
	t.Helper()
	name := fmt.Sprintf("pv-%d", n)
	spec, err := guestchannel.MarshalSpec(&guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: "uid-" + name, Namespace: "default", Name: name, RestartPolicy: "Always",
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:base"},
		},
		Containers: []guestchannel.Container{{Name: "app", Chain: []string{"sha256:base"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "image-flat.vmdk")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return VM{Key: fmt.Sprintf("vm-%d", n), Name: name, Host: "host-1", NumCPU: 1, MemoryMB: 64, Spec: spec,
		Disks: []Disk{{Unit: "scsi0:0", Path: filepath.Join(dir, "disk-flat.vmdk"), CapacityBytes: 1 << 20},
			{Unit: "scsi0:1", Path: image, ReadOnly: true}}}
}

// TestGuestsBootInParallel powers three VMs on at once: their boots must
// be under way together (each waits in the boot until all three have
// begun), and all three guests run afterwards.
func TestGuestsBootInParallel(t *testing.T) {
	m := newTestManager(t)
	const n = 3
	var mu sync.Mutex
	begun, alone := 0, 0
	all := make(chan struct{})
	m.beforeBoot = func(VM) {
		mu.Lock()
		begun++
		if begun == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			mu.Lock()
			alone++
			mu.Unlock()
		}
	}
	errs := make(chan error, n)
	for i := range n {
		vm := testVM(t, i)
		go func() { errs <- m.PowerOn(vm) }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if alone > 0 {
		t.Fatalf("%d of %d boots waited alone for the others: guests boot one at a time", alone, n)
	}
	running := m.Running()
	slices.Sort(running)
	if want := []string{"vm-0", "vm-1", "vm-2"}; !slices.Equal(running, want) {
		t.Errorf("running guests %v, want %v", running, want)
	}
}

// TestBeginPowerOnReturnsBeforeTheBoot starts a boot that cannot finish
// yet: BeginPowerOn must return at once, and what is asked of the guest
// meanwhile (Move, Guest) must wait for the boot and then see it, so a
// VM's operations keep the order in which they were made.
func TestBeginPowerOnReturnsBeforeTheBoot(t *testing.T) {
	m := newTestManager(t)
	entered, release := make(chan struct{}), make(chan struct{})
	m.beforeBoot = func(VM) {
		close(entered)
		<-release
	}
	vm := testVM(t, 1)
	booted := m.BeginPowerOn(vm)
	<-entered
	select {
	case err := <-booted:
		t.Fatalf("the boot ended (%v) while it was held", err)
	default:
	}
	moved := make(chan struct{})
	go func() {
		m.Move("vm-1", "host-2")
		close(moved)
	}()
	info := make(chan Info, 1)
	go func() {
		i, _ := m.Guest("vm-1")
		info <- i
	}()
	// Both calls must wait for the boot: until they are both waiting, and
	// while the boot is held, neither can have returned.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		m.mu.Lock()
		n := m.awaiting
		m.mu.Unlock()
		if n == 2 {
			break
		}
		select {
		case <-moved:
			t.Fatal("Move returned while the guest was still booting: the move would be lost")
		case <-info:
			t.Fatal("Guest returned while the guest was still booting")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls wait for the boot, want Move and Guest", n)
		}
	}
	close(release)
	if err := <-booted; err != nil {
		t.Fatal(err)
	}
	<-moved
	if i := <-info; i.PID == 0 {
		t.Fatal("Guest, asked during the boot, did not describe the booted guest")
	}
	if i, ok := m.Guest("vm-1"); !ok || i.VM.Host != "host-2" {
		t.Errorf("after the boot the guest is on %q (running %v), want host-2: the move made during the boot was lost", i.VM.Host, ok)
	}
	if err := m.PowerOff("vm-1"); err != nil {
		t.Fatal(err)
	}
}

// TestPowerOffAndCloseWaitForABoot powers a VM off, then closes the
// manager, each while a guest boots: the power-off stops the guest once
// booted (no guest left running behind it), and Close stops the other and
// removes every cgroup.
func TestPowerOffAndCloseWaitForABoot(t *testing.T) {
	m := newTestManager(t)
	entered, release := make(chan string, 1), make(chan struct{})
	m.beforeBoot = func(vm VM) {
		entered <- vm.Key
		<-release
	}

	powered := make(chan error, 1)
	vm1, vm2 := testVM(t, 1), testVM(t, 2)
	go func() { powered <- m.PowerOn(vm1) }()
	<-entered
	off := make(chan error, 1)
	go func() { off <- m.PowerOff("vm-1") }()
	release <- struct{}{}
	if err := <-powered; err != nil {
		t.Fatal(err)
	}
	if err := <-off; err != nil {
		t.Fatal(err)
	}
	if r := m.Running(); len(r) != 0 {
		t.Errorf("after the power-off, guests %v still run", r)
	}

	go func() { powered <- m.PowerOn(vm2) }()
	<-entered
	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	// Close marks the manager closed, then waits for the boot.
	for {
		m.mu.Lock()
		c := m.closed
		m.mu.Unlock()
		if c {
			break
		}
		time.Sleep(time.Millisecond)
	}
	release <- struct{}{}
	if err := <-powered; err == nil || !errors.Is(err, errClosed) {
		t.Errorf("a boot finished after Close: PowerOn = %v, want %v", err, errClosed)
	}
	<-closed
	for _, h := range m.cg.hier {
		if _, err := os.Stat(h.dir(m.cg.base)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s is left after Close (%v)", h.dir(m.cg.base), err)
		}
	}
}
