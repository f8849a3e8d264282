package cgroupfs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
)

// A tree made in every hierarchy is gone from each after RemoveTree,
// children first.
func TestRemoveTree(t *testing.T) {
	privtest.Require(t, "makes cgroups")
	path := fmt.Sprintf("podvisor-cgroupfs-test-%d", os.Getpid())
	var made []string
	for _, root := range Roots() {
		dir := filepath.Join(root, path, "child")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			continue // a hierarchy that takes no new cgroups here (read-only, named)
		}
		made = append(made, filepath.Join(root, path))
	}
	if len(made) == 0 {
		t.Fatalf("no hierarchy of %v took a cgroup", Roots())
	}
	if err := RemoveTree(path); err != nil {
		t.Fatal(err)
	}
	for _, d := range made {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", d, err)
		}
	}
	if err := RemoveTree(path); err != nil {
		t.Errorf("removing a tree that is gone: %v", err)
	}
}

// DeepestFirst lists a tree so that every directory comes after those it
// holds, and a tree that is gone as nothing.
func TestDeepestFirst(t *testing.T) {
	top := t.TempDir()
	for _, d := range []string{"a/b", "c"} {
		if err := os.MkdirAll(filepath.Join(top, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(top, "a", "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got := DeepestFirst(top)
	want := []string{filepath.Join(top, "c"), filepath.Join(top, "a", "b"), filepath.Join(top, "a"), top}
	if !slices.Equal(got, want) {
		t.Errorf("DeepestFirst = %q, want %q", got, want)
	}
	if got := DeepestFirst(filepath.Join(top, "gone")); len(got) != 0 {
		t.Errorf("DeepestFirst of a missing directory = %q, want nothing", got)
	}
}
