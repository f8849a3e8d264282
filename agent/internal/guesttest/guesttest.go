// Package guesttest runs the real agent binary as PID 1 of a guest made of
// fresh namespaces, with erofs image disks built from busybox-static and a
// sparse ephemeral disk file, and plays the host side of its channel.
//
// It is the agent module's own harness; the simulated datacenter does the
// same for whole pod VMs.
package guesttest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/cgroupfs"
	"github.com/podvisor/podvisor/agent/configdisk"
	"github.com/podvisor/podvisor/agent/filehash"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// BuildAgent builds the agent statically into dir.
func BuildAgent(dir string) (string, error) {
	out := filepath.Join(dir, "podvm-agent")
	cmd := exec.Command("go", "build", "-o", out, "github.com/podvisor/podvisor/agent/cmd/podvm-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build podvm-agent: %v: %s", err, b)
	}
	return out, nil
}

// Image is a two-layer test image: Base holds busybox and /etc files, Top
// adds /etc/top.txt and a whiteout that hides the base's /etc/removed.
type Image struct {
	Base, Top     string // erofs image files
	BaseID, TopID string // chainIDs
	// BaseDir is the base layer's staged directory (a plain rootfs).
	BaseDir string
	sums    map[string]string
}

// Applets are the busybox applets the image links.
var Applets = []string{"sh", "echo", "sleep", "cat", "httpd", "ls", "head", "tail", "touch", "rm", "mkdir",
	"test", "hostname", "id", "env", "kill", "true", "false", "dd", "tr", "grep", "wc", "printf", "seq"}

// BuildImage stages and builds the image disks in dir.
func BuildImage(dir string) (*Image, error) {
	base := filepath.Join(dir, "stage-base")
	top := filepath.Join(dir, "stage-top")
	for _, d := range []string{filepath.Join(base, "bin"), filepath.Join(base, "etc"), filepath.Join(base, "tmp"), filepath.Join(top, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox-static: %w", err)
	}
	if err := os.WriteFile(filepath.Join(base, "bin/busybox"), bb, 0o755); err != nil {
		return nil, err
	}
	for _, a := range Applets {
		if err := os.Symlink("busybox", filepath.Join(base, "bin", a)); err != nil {
			return nil, err
		}
	}
	files := map[string]string{
		filepath.Join(base, "etc/passwd"):   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		filepath.Join(base, "etc/group"):    "root:x:0:\nnogroup:x:65534:\n",
		filepath.Join(base, "etc/base.txt"): "base\n",
		filepath.Join(base, "etc/removed"):  "removed by the top layer\n",
		filepath.Join(top, "etc/top.txt"):   "top\n",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(filepath.Join(base, "tmp"), 0o1777); err != nil {
		return nil, err
	}
	// An overlay whiteout: a 0/0 character device.
	if err := unix.Mknod(filepath.Join(top, "etc/removed"), unix.S_IFCHR|0o000, 0); err != nil {
		return nil, fmt.Errorf("whiteout: %w", err)
	}
	img := &Image{Base: filepath.Join(dir, "base.erofs"), Top: filepath.Join(dir, "top.erofs"),
		BaseID: "sha256:" + strings.Repeat("b", 64), TopID: "sha256:" + strings.Repeat("7", 64), BaseDir: base, sums: map[string]string{}}
	for _, b := range [][2]string{{img.Base, base}, {img.Top, top}} {
		if out, err := exec.Command("mkfs.erofs", "--quiet", "--all-root", b[0], b[1]).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mkfs.erofs %s: %v: %s", b[0], err, out)
		}
		sum, err := filehash.SHA256(b[0])
		if err != nil {
			return nil, err
		}
		img.sums[b[0]] = sum
	}
	return img, nil
}

// Unchanged fails t if an image file's content changed since it was built.
func (img *Image) Unchanged(t testing.TB) {
	t.Helper()
	for path, want := range img.sums {
		got, err := filehash.SHA256(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("image disk %s changed: sha256 %s, built as %s", path, got, want)
		}
	}
}

// Spec returns a pod spec over img with the given containers (each gets the
// image's chain, top first).
func (img *Image) Spec(name, policy string, grace int64, init, ctrs []guestchannel.Container) *guestchannel.PodSpec {
	for _, cs := range [][]guestchannel.Container{init, ctrs} {
		for i := range cs {
			cs[i].Chain = []string{img.TopID, img.BaseID}
			if cs[i].Image == "" {
				cs[i].Image = "test/busybox:1"
			}
		}
	}
	return &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: "uid-" + name, Namespace: "default", Name: name, Hostname: name,
		RestartPolicy: policy, TerminationGracePeriodSeconds: grace,
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: img.BaseID},
			{Role: guestchannel.DiskImage, Unit: "scsi0:2", FS: "erofs", ChainID: img.TopID, Parent: img.BaseID},
		},
		InitContainers: init, Containers: ctrs,
	}
}

var guestSeq atomic.Int64

// Guest is one running agent.
type Guest struct {
	t         testing.TB
	Dir       string
	StateDir  string
	Ephemeral string
	Cgroup    string // CgroupParent
	Host      *Host
	cmd       *exec.Cmd
	exited    chan struct{}
	exitErr   error
	logFile   string
	stopped   bool
	updates   *os.File
	// configDisk is the configuration disk's file (Options.ConfigDisk).
	configDisk string
}

// Update writes spec on the agent's updates descriptor (Options.Updates),
// as a hypervisor does after a reconfigure changed the VM's guestinfo.
func (g *Guest) Update(spec *guestchannel.PodSpec) {
	g.t.Helper()
	raw, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		g.t.Fatal(err)
	}
	if _, err := g.updates.WriteString(raw + "\n"); err != nil {
		g.t.Fatal(err)
	}
}

// Options tune a guest.
type Options struct {
	Runtime string
	// Backoff and MaxBackoff are the restart back-off (default 200 ms, 1 s).
	Backoff, MaxBackoff time.Duration
	LogMaxBytes         int64
	// Devices replaces entries of the unit → file map.
	Devices map[string]string
	// Updates gives the agent an updates descriptor (BootConfig.Updates)
	// the test writes on with Guest.Update.
	Updates bool
	// ConfigDisk gives the agent a configuration disk holding the spec,
	// to read again (BootConfig.Watch), as a booted VM's; the test changes
	// it with Guest.Reconfigure.
	ConfigDisk bool
	// VolumeCheck is how often sized emptyDir volumes are measured
	// (default 10 s).
	VolumeCheck time.Duration
	// VMCPUs, when set, caps the guest's cgroup at that many CPUs (its
	// cgroup v1 CFS quota), as the simulated hypervisor caps a VM's.
	VMCPUs int
}

// Reconfigure rewrites the guest's configuration disk (Options.ConfigDisk)
// with spec and the VM uuid, as a hypervisor presents a VM's changed
// guestinfo, or a forked child's own: in one rename, so the agent never
// reads half of it.
func (g *Guest) Reconfigure(spec *guestchannel.PodSpec, vmUUID string) {
	g.t.Helper()
	if err := writeConfigDisk(g.configDisk, spec, vmUUID); err != nil {
		g.t.Fatal(err)
	}
}

// ReconfigureRaw is Reconfigure with the spec's guestinfo value as given,
// whether or not it is a spec the agent can run.
func (g *Guest) ReconfigureRaw(rawSpec, vmUUID string) {
	g.t.Helper()
	if err := writeConfigDiskRaw(g.configDisk, rawSpec, vmUUID); err != nil {
		g.t.Fatal(err)
	}
}

func writeConfigDisk(path string, spec *guestchannel.PodSpec, vmUUID string) error {
	raw, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		return err
	}
	return writeConfigDiskRaw(path, raw, vmUUID)
}

func writeConfigDiskRaw(path, raw, vmUUID string) error {
	b, err := configdisk.Bytes(map[string]string{guestchannel.GuestinfoSpec: raw, vmboot.GuestinfoVMUUID: vmUUID})
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".new", b, 0o600); err != nil {
		return err
	}
	return os.Rename(path+".new", path)
}

// Start boots a guest running spec with the agent at agentBin.
func Start(t testing.TB, agentBin string, img *Image, spec *guestchannel.PodSpec, opt Options) *Guest {
	t.Helper()
	dir := t.TempDir()
	g := &Guest{t: t, Dir: dir, StateDir: filepath.Join(dir, "state"), Ephemeral: filepath.Join(dir, "disk0-flat.vmdk"),
		Cgroup: fmt.Sprintf("/podvisor-agenttest-%d-%d", os.Getpid(), guestSeq.Add(1)), exited: make(chan struct{}),
		logFile: filepath.Join(dir, "agent.log")}
	// Registered first, so it runs last (after cleanup has stopped the
	// agent) and also when the test fails before the agent starts: the
	// cgroup tree goes from every hierarchy.
	t.Cleanup(func() {
		if err := RemoveCgroup(g.Cgroup); err != nil {
			t.Error(err)
		}
	})
	if opt.VMCPUs > 0 {
		dir := filepath.Join("/sys/fs/cgroup/cpu", g.Cgroup)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(opt.VMCPUs*100000)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A hypervisor presents a zero-filled device of the disk's capacity.
	f, err := os.Create(g.Ephemeral)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(256 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rawSpec, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "channel.sock")
	g.Host = Listen(t, sock)
	if opt.Backoff == 0 {
		opt.Backoff, opt.MaxBackoff = 200*time.Millisecond, time.Second
	}
	boot := guestchannel.BootConfig{
		Channel:  "unix:" + sock,
		Devices:  map[string]string{"scsi0:0": g.Ephemeral, "scsi0:1": img.Base, "scsi0:2": img.Top},
		StateDir: g.StateDir, Runtime: opt.Runtime, CgroupParent: g.Cgroup, Spec: json.RawMessage(rawSpec),
		VMUUID: "vm-" + spec.Name, RestartBackoffMillis: opt.Backoff.Milliseconds(),
		MaxRestartBackoffMillis: opt.MaxBackoff.Milliseconds(), LogMaxBytes: opt.LogMaxBytes, VolumeCheckMillis: opt.VolumeCheck.Milliseconds(),
	}
	for unit, path := range opt.Devices {
		boot.Devices[unit] = path
	}
	var updatesR *os.File
	if opt.Updates {
		if updatesR, g.updates, err = os.Pipe(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.updates.Close() })
		boot.Updates = "fd:3"
	}
	if opt.ConfigDisk {
		g.configDisk = filepath.Join(dir, "config.img")
		if err := writeConfigDisk(g.configDisk, spec, boot.VMUUID); err != nil {
			t.Fatal(err)
		}
		boot.Watch = guestchannel.WatchConfigDisk + g.configDisk
	}
	bootFile := filepath.Join(dir, "boot.json")
	b, _ := json.Marshal(boot)
	if opt.ConfigDisk {
		// As a booted VM's first stage writes it (cmd/podvm-init): the
		// spec in it laid out otherwise than on the configuration disk.
		b, _ = json.MarshalIndent(boot, "", "  ")
	}
	if err := os.WriteFile(bootFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(g.logFile)
	if err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(agentBin, "--boot-config", bootFile, "--log-level", "debug")
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if updatesR != nil {
		g.cmd.ExtraFiles = []*os.File{updatesR}
		defer updatesR.Close()
	}
	g.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWNET,
		Pdeathsig:  unix.SIGKILL,
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	go func() {
		g.exitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(g.cleanup)
	return g
}

// Pid is the agent's pid on the host.
func (g *Guest) Pid() int { return g.cmd.Process.Pid }

// Path is a path inside the guest's mount namespace, seen from the host.
func (g *Guest) Path(p string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", g.Pid()), p)
}

// UpperDir is container name's upper directory on disk 0, seen from the
// host.
func (g *Guest) UpperDir(name string) string {
	return g.Path(filepath.Join(g.StateDir, "disks/ephemeral/containers", name, "upper"))
}

// Shutdown stops the agent as a power-off does (SIGTERM) and checks that it
// exits cleanly: every container stopped, every disk unmounted.
func (g *Guest) Shutdown() {
	t := g.t
	t.Helper()
	_ = g.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
		t.Errorf("agent did not exit within 30 s of SIGTERM")
	}
	g.stopped = true
	if g.exitErr != nil {
		t.Errorf("agent exit: %v", g.exitErr)
	}
}

// Log is the agent's own log so far.
func (g *Guest) Log() string {
	b, _ := os.ReadFile(g.logFile)
	return string(b)
}

func (g *Guest) cleanup() {
	t := g.t
	if !g.stopped {
		g.Shutdown()
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", g.Log())
	}
	// Nothing of the guest outlives it: no process in its cgroups, no
	// loop device on its disks, no mount leaked to the host.
	if procs := CgroupProcs(g.Cgroup); len(procs) > 0 {
		t.Errorf("processes left in cgroup %s: %v", g.Cgroup, procs)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		loops := LoopsBackedBy(g.Dir)
		if len(loops) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("loop devices left on the guest's disks: %v", loops)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := MountsUnder(g.Dir); len(m) > 0 {
		t.Errorf("mounts of the guest visible on the host: %v", m)
	}
}

// CgroupProcs lists the pids in the cgroup tree at path in every v1
// hierarchy and the unified one.
func CgroupProcs(path string) []string {
	var procs []string
	for _, root := range cgroupfs.Roots() {
		_ = filepath.WalkDir(filepath.Join(root, path), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				procs = append(procs, p+":"+f)
			}
			return nil
		})
	}
	return procs
}

// CgroupDirs lists the cgroup directories below path (path excluded).
func CgroupDirs(path string) []string {
	var dirs []string
	for _, root := range cgroupfs.Roots() {
		top := filepath.Join(root, path)
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != top {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs
}

// RemoveCgroup removes path's tree from every hierarchy (cgroupfs.RemoveTree).
func RemoveCgroup(path string) error { return cgroupfs.RemoveTree(path) }

// Leftovers lists the cgroup directories of this process's guests and
// benchmarks (podvisor-agent*-<pid>-*) still present in any hierarchy.
func Leftovers(pid int) []string {
	var out []string
	for _, root := range cgroupfs.Roots() {
		for _, kind := range []string{"agenttest", "agentbench"} {
			m, _ := filepath.Glob(filepath.Join(root, fmt.Sprintf("podvisor-%s-%d-*", kind, pid)))
			out = append(out, m...)
		}
	}
	return out
}

// LoopsBackedBy lists loop devices whose backing file is under dir.
func LoopsBackedBy(dir string) []string {
	var out []string
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		if strings.HasPrefix(strings.TrimSpace(string(b)), dir) {
			out = append(out, p)
		}
	}
	return out
}

// MountsUnder lists the host's mounts below dir.
func MountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// Mounts lists the mounts below dir in the guest's mount namespace,
// mountpoint → the mount's identity: its unique id (statx
// STATX_MNT_ID_UNIQUE, Linux 6.8), which a filesystem unmounted and
// mounted again never has twice. An older kernel gives the mount table's
// id only, which the next mount may reuse: "reused?" marks it.
func (g *Guest) Mounts(dir string) map[string]string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", g.Pid()))
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) <= 4 || !strings.HasPrefix(f[4], dir) {
			continue
		}
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, g.Path(f[4]), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID_UNIQUE, &st)
		if err == nil && st.Mask&unix.STATX_MNT_ID_UNIQUE != 0 {
			out[f[4]] = strconv.FormatUint(st.Mnt_id, 10)
		} else {
			out[f[4]] = f[0] + " (reused?)"
		}
	}
	return out
}

// Descendants lists the processes below pid: in a guest, every process of
// its pid namespace but the agent itself (orphans come back to PID 1).
func Descendants(pid int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var p int
		if _, err := fmt.Sscanf(e.Name(), "%d", &p); err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// The command may hold spaces and parentheses: fields start after the last ')'.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		var state string
		var ppid int
		if _, err := fmt.Sscanf(rest, " %s %d", &state, &ppid); err == nil {
			parent[p] = ppid
		}
	}
	var out []int
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// Eventually polls cond (a fact outside the status reports, such as a
// log's content) until it holds, failing t after timeout.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if !waitFor(timeout, cond) {
		t.Fatalf("waiting for %s: not within %s", what, timeout)
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
