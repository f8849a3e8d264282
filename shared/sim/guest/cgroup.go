package guest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podvisor/podvisor/agent/cgroupfs"
)

// hierarchy is one mounted cgroup v1 hierarchy: a controller (memory, cpu,
// ...) or a named hierarchy (name=systemd).
type hierarchy struct {
	// name is how /proc/self/cgroup names it ("memory", "cpu,cpuacct",
	// "name=systemd").
	name string
	// mount is where it is mounted; root is the cgroup the mount shows as
	// its top (usually "/").
	mount, root string
	// own is this process's cgroup in the hierarchy.
	own string
}

// dir is the directory of cgroup path p (absolute in the hierarchy).
func (h hierarchy) dir(p string) string {
	rel := strings.TrimPrefix(p, h.root)
	return filepath.Join(h.mount, rel)
}

func (h hierarchy) has(controller string) bool {
	return slices.Contains(strings.Split(h.name, ","), controller)
}

// cgroups is the set of v1 hierarchies guests are placed in, and the base
// cgroup (the same path in every hierarchy) under which each guest gets the
// cgroup of its VM.
type cgroups struct {
	hier []hierarchy
	// base is absolute and the same in every hierarchy, so a guest's
	// CgroupParent is one path whatever the controller.
	base string
	// madeMu guards made: guests' cgroups are created by boots running
	// at once.
	madeMu sync.Mutex
	// made lists the directories created for base, deepest last, so Close
	// removes exactly those.
	made []string
}

// requiredControllers are the controllers a guest's VM is sized and frozen
// with.
var requiredControllers = []string{"cpu", "memory", "pids", "freezer"}

// discoverCgroups reads /proc/self/cgroup and /proc/self/mountinfo.
func discoverCgroups() ([]hierarchy, error) {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	var out []hierarchy
	for line := range strings.SplitSeq(strings.TrimSpace(string(own)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue // the cgroup2 line "0::/"
		}
		m, ok := mounts[parts[1]]
		if !ok {
			continue // a hierarchy this mount namespace does not show
		}
		out = append(out, hierarchy{name: parts[1], mount: m[0], root: m[1], own: parts[2]})
	}
	var missing []string
	for _, c := range requiredControllers {
		if !slices.ContainsFunc(out, func(h hierarchy) bool { return h.has(c) }) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("cgroup v1 controllers %s are not mounted (guests need cpu, memory, pids and freezer under /sys/fs/cgroup)", strings.Join(missing, ", "))
	}
	return out, nil
}

// cgroupMounts maps a v1 hierarchy's name (as /proc/self/cgroup spells it)
// to its mount point and root.
func cgroupMounts() (map[string][2]string, error) {
	mounts, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	out := map[string][2]string{}
	for _, m := range mounts {
		if m.fstype != "cgroup" {
			continue
		}
		var names []string
		for o := range strings.SplitSeq(m.super, ",") {
			if o == "rw" || o == "ro" || o == "relatime" || o == "noatime" || o == "nosuid" || o == "nodev" || o == "noexec" {
				continue
			}
			if strings.HasPrefix(o, "release_agent=") || o == "clone_children" || o == "xattr" || o == "noprefix" || o == "cpuset_v2_mode" {
				continue
			}
			names = append(names, o)
		}
		// /proc/self/cgroup lists controllers in the kernel's order, which
		// is the order of the super options.
		key := strings.Join(names, ",")
		if _, seen := out[key]; !seen {
			out[key] = [2]string{m.mount, m.root}
		}
	}
	return out, nil
}

// mountEntry is a line of /proc/self/mountinfo: id parent major:minor root
// mountpoint options [optional...] - fstype source superoptions.
type mountEntry struct{ root, mount, fstype, super string }

func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		out = append(out, mountEntry{root: pf[3], mount: unescapeMount(pf[4]), fstype: qf[0], super: qf[2]})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// newCgroups makes the base cgroup name (unique to this process and
// manager) in every hierarchy. The base path lies under this process's own
// cgroup in each hierarchy: it extends the deepest of them, which every
// other one is a prefix of (on a hybrid host the others are usually "/").
func newCgroups(name string) (*cgroups, error) {
	hier, err := discoverCgroups()
	if err != nil {
		return nil, err
	}
	deepest := "/"
	for _, h := range hier {
		if len(h.own) > len(deepest) {
			deepest = h.own
		}
	}
	for _, h := range hier {
		if h.own != "/" && deepest != h.own && !strings.HasPrefix(deepest, h.own+"/") {
			return nil, fmt.Errorf("this process's cgroups do not nest (%s is %s, another is %s): cannot give a guest one cgroup path", h.name, h.own, deepest)
		}
	}
	cg := &cgroups{hier: hier, base: filepath.Join(deepest, name)}
	for _, h := range hier {
		if err := cg.mkdirAll(h, cg.base); err != nil {
			cg.close()
			return nil, err
		}
	}
	return cg, nil
}

// mkdirAll creates path p in h level by level, recording what it made and
// giving new cpuset levels their parent's cpus and mems (a cpuset cgroup
// starts empty and refuses tasks).
func (cg *cgroups) mkdirAll(h hierarchy, p string) error {
	rel := strings.TrimPrefix(strings.TrimPrefix(p, h.root), "/")
	cur := h.mount
	for part := range strings.SplitSeq(rel, "/") {
		parent := cur
		cur = filepath.Join(cur, part)
		if err := os.Mkdir(cur, 0o755); err != nil {
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return fmt.Errorf("cgroup %s: %w", cur, err)
		}
		cg.madeMu.Lock()
		cg.made = append(cg.made, cur)
		cg.madeMu.Unlock()
		if h.has("cpuset") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(parent, f))
				if err != nil {
					return fmt.Errorf("cgroup %s: %w", cur, err)
				}
				if err := os.WriteFile(filepath.Join(cur, f), v, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %s: %w", cur, f, err)
				}
			}
		}
	}
	return nil
}

// close removes the base cgroups (deepest first). Guests' cgroups must be
// gone already.
func (cg *cgroups) close() {
	cg.madeMu.Lock()
	defer cg.madeMu.Unlock()
	for i := len(cg.made) - 1; i >= 0; i-- {
		_ = os.Remove(cg.made[i])
	}
	cg.made = nil
}

// vmCgroup is one guest's cgroup in every hierarchy.
type vmCgroup struct {
	cg   *cgroups
	path string // absolute, the same in every hierarchy
}

// create makes the VM's cgroup in every hierarchy and sizes it: a CFS
// quota of cpus whole CPUs and a memory limit of memBytes.
func (cg *cgroups) create(key string, cpus int32, memBytes int64) (*vmCgroup, error) {
	v := &vmCgroup{cg: cg, path: cg.base + "/" + key}
	for _, h := range cg.hier {
		if err := cg.mkdirAll(h, v.path); err != nil {
			v.remove()
			return nil, err
		}
		// The VM's own directory is removed by remove(), not by close():
		// forget it in made so close does not try it twice.
		cg.madeMu.Lock()
		cg.made = slices.DeleteFunc(cg.made, func(d string) bool { return d == h.dir(v.path) })
		cg.madeMu.Unlock()
	}
	if err := v.size(cpus, memBytes); err != nil {
		v.remove()
		return nil, err
	}
	return v, nil
}

// size sets the VM's CFS quota to cpus whole CPUs and its memory limit to
// memBytes (zero: left as they are).
func (v *vmCgroup) size(cpus int32, memBytes int64) error {
	if cpus > 0 {
		if err := v.write("cpu", "cpu.cfs_period_us", "100000"); err != nil {
			return err
		}
		if err := v.write("cpu", "cpu.cfs_quota_us", strconv.FormatInt(int64(cpus)*100000, 10)); err != nil {
			return err
		}
	}
	if memBytes > 0 {
		return v.write("memory", "memory.limit_in_bytes", strconv.FormatInt(memBytes, 10))
	}
	return nil
}

func (v *vmCgroup) hier(controller string) hierarchy {
	for _, h := range v.cg.hier {
		if h.has(controller) {
			return h
		}
	}
	return hierarchy{} // discoverCgroups guarantees the required ones
}

// Dir is the VM cgroup's directory in a controller's hierarchy.
func (v *vmCgroup) Dir(controller string) string { return v.hier(controller).dir(v.path) }

func (v *vmCgroup) write(controller, file, value string) error {
	p := filepath.Join(v.Dir(controller), file)
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("cgroup %s = %s: %w", p, value, err)
	}
	return nil
}

// procsFiles are the cgroup.procs files a guest writes itself into, one per
// hierarchy.
func (v *vmCgroup) procsFiles() []string {
	out := make([]string, 0, len(v.cg.hier))
	for _, h := range v.cg.hier {
		out = append(out, filepath.Join(h.dir(v.path), "cgroup.procs"))
	}
	return out
}

// pids lists every process in the VM's cgroup and its children (those the
// guest's container runtime made), from the memory hierarchy.
func (v *vmCgroup) pids() []int {
	var out []int
	_ = filepath.WalkDir(v.Dir("memory"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		for f := range strings.FieldsSeq(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return nil
	})
	return out
}

// killAll SIGKILLs every process of the VM until none is left or the
// deadline passes. A frozen process does not die until thawed: the caller
// thaws first.
func (v *vmCgroup) killAll(deadline time.Time) error {
	for {
		pids := v.pids()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still holds processes %v", v.path, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeze sets the freezer state and waits until the kernel reports it.
func (v *vmCgroup) freeze(frozen bool) error {
	want := "THAWED"
	if frozen {
		want = "FROZEN"
	}
	if err := v.write("freezer", "freezer.state", want); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	// A few tasks freeze or thaw in well under a millisecond: poll soon,
	// then less often. (A flat 5 ms sleep held the manager's lock, which
	// Pause keeps across the freeze, 5 ms per template pause.)
	wait := 100 * time.Microsecond
	for {
		b, err := os.ReadFile(filepath.Join(v.Dir("freezer"), "freezer.state"))
		if err != nil {
			return fmt.Errorf("freezer state of %s: %w", v.path, err)
		}
		if strings.TrimSpace(string(b)) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("freezer of %s: still %s, want %s", v.path, strings.TrimSpace(string(b)), want)
		}
		time.Sleep(wait)
		wait = min(2*wait, 5*time.Millisecond)
	}
}

// remove deletes the VM's cgroup and whatever the guest made below it,
// deepest first, in every hierarchy. The processes must be gone.
func (v *vmCgroup) remove() error {
	var errs []error
	for _, h := range v.cg.hier {
		for _, dir := range cgroupfs.DeepestFirst(h.dir(v.path)) {
			if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
			}
		}
	}
	return errors.Join(errs...)
}
