package supervisor

import (
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"
)

// The VM's CPU is its cgroup's CFS quota (v1 or v2), no more than the
// guest's CPUs, and the guest's CPUs without a quota.
func TestCPUCapacityIsTheParentsQuota(t *testing.T) {
	all := int64(goruntime.NumCPU()) * 1000
	write := func(root, f, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, f), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v1, v2, none, unlimited := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	write(v1, "cpu/vm/cpu.cfs_quota_us", "50000")
	write(v1, "cpu/vm/cpu.cfs_period_us", "100000")
	write(v2, "vm/cpu.max", "150000 100000")
	write(unlimited, "cpu/vm/cpu.cfs_quota_us", "-1")
	write(unlimited, "cpu/vm/cpu.cfs_period_us", "100000")
	for _, tc := range []struct {
		root string
		want int64
	}{{v1, min(500, all)}, {v2, min(1500, all)}, {none, all}, {unlimited, all}} {
		if got := cpuCapacityMilli(tc.root, "/vm"); got != tc.want {
			t.Errorf("%s: %dm, want %dm", tc.root, got, tc.want)
		}
	}
}
