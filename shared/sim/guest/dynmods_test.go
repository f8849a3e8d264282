package guest

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
)

// fakeCgroup2 stands in for the kernel's cgroup2 mount in the bookkeeping
// tests: which processes turn the option on and who restores it is decided
// between processes through the lock file, which these tests exercise for
// real; the mount itself is shared by every process of the machine (other
// test packages running at the same time included), so asserting on it
// here could not tell this test's doing from theirs.
type fakeCgroup2 struct {
	opts     []string
	remounts []string
}

func (f *fakeCgroup2) install(t *testing.T) {
	t.Helper()
	oldLock, oldRemount, oldFind := dynmodsLock, remountCgroup2, findCgroup2
	dynmodsLock = filepath.Join(t.TempDir(), "run", "cgroup2-favordynmods.lock")
	remountCgroup2 = func(mount, data string) error {
		f.remounts = append(f.remounts, data)
		f.opts = strings.Split(data, ",")
		if data == "" {
			f.opts = nil
		}
		return nil
	}
	findCgroup2 = func() (string, []string, bool) { return "/sys/fs/cgroup/unified", slices.Clone(f.opts), true }
	t.Cleanup(func() { dynmodsLock, remountCgroup2, findCgroup2 = oldLock, oldRemount, oldFind })
}

// TestDynModsLastProcessRestores: two processes (two holds on the lock
// file) run guests; the first turns the option on, keeping the mount's
// other options; the second finds it on; the first to stop leaves it on
// for the other, and the last restores what the mount had.
func TestDynModsLastProcessRestores(t *testing.T) {
	fake := &fakeCgroup2{opts: []string{"nsdelegate"}}
	fake.install(t)
	log := slog.New(slog.DiscardHandler)

	a := acquireDynMods(log)
	if !slices.Equal(fake.opts, []string{"nsdelegate", "favordynmods"}) {
		t.Fatalf("options while guests run: %v, want nsdelegate kept and favordynmods added", fake.opts)
	}
	b := acquireDynMods(log)
	if len(fake.remounts) != 1 {
		t.Fatalf("remounts %q: the second process must find the option on", fake.remounts)
	}
	restoreDynMods(log, a)
	if !slices.Contains(fake.opts, "favordynmods") {
		t.Fatalf("options %v after the first process stopped: the other's guests still run", fake.opts)
	}
	restoreDynMods(log, b)
	if !slices.Equal(fake.opts, []string{"nsdelegate"}) {
		t.Fatalf("options %v after the last process stopped, want the mount's own (nsdelegate)", fake.opts)
	}
}

// TestDynModsLeavesTheHostsSetting: an option the host turned on stays on.
func TestDynModsLeavesTheHostsSetting(t *testing.T) {
	fake := &fakeCgroup2{opts: []string{"favordynmods"}}
	fake.install(t)
	log := slog.New(slog.DiscardHandler)
	restoreDynMods(log, acquireDynMods(log))
	if len(fake.remounts) != 0 || !slices.Equal(fake.opts, []string{"favordynmods"}) {
		t.Fatalf("remounts %q, options %v: the host's own setting was changed", fake.remounts, fake.opts)
	}
}

// TestGuestsRunWithFavorDynMods: while a manager runs guests, the machine's
// cgroup2 hierarchy has favordynmods (no other process can restore it while
// this one holds the lock file).
func TestGuestsRunWithFavorDynMods(t *testing.T) {
	newTestManager(t) // needs root, as the remount does
	// Where the machine cannot have the option there is nothing to check;
	// CI's machines can, so there it is a failure, never a skip.
	missing := ""
	if _, _, ok := cgroup2Mount(); !ok {
		missing = "no cgroup2 hierarchy is mounted here"
	} else if b, err := os.ReadFile("/sys/kernel/cgroup/features"); err != nil || !strings.Contains(string(b), "favordynmods") {
		missing = "this kernel has no favordynmods"
	}
	if missing != "" {
		if privtest.Required() {
			t.Fatalf("%s (%s is set: this machine must run it)", missing, privtest.EnvRequire)
		}
		t.Skip(missing)
	}
	if _, opts, _ := cgroup2Mount(); !slices.Contains(opts, "favordynmods") {
		t.Fatalf("cgroup2 options while guests run: %v, want favordynmods", opts)
	}
}
