package runtime

import (
	"os"
	"path/filepath"
	"testing"
)

// With no runtime named, New takes crun when it is on PATH, else runc, and
// names the one it found.
func TestNewPrefersCrun(t *testing.T) {
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	exe := func(name string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New("", t.TempDir()); err == nil {
		t.Fatal("New found a runtime on an empty PATH")
	}
	exe("runc")
	r, err := New("", t.TempDir())
	if err != nil || r.Name() != "runc" {
		t.Fatalf("New with runc only = %v, %v; want runc", r, err)
	}
	exe("crun")
	if r, err = New("", t.TempDir()); err != nil || r.Name() != "crun" {
		t.Fatalf("New with both = %v, %v; want crun", r, err)
	}
	if r, err = New("runc", t.TempDir()); err != nil || r.Name() != "runc" {
		t.Fatalf("New(runc) with both = %v, %v; want runc", r, err)
	}
}

// Exists follows the runtime's state directory: a container is known
// while <root>/<id> exists.
func TestExists(t *testing.T) {
	r := &Runtime{Bin: "crun", Root: t.TempDir()}
	if r.Exists("app") {
		t.Fatal("Exists on an empty root")
	}
	if err := os.Mkdir(filepath.Join(r.Root, "app"), 0o700); err != nil {
		t.Fatal(err)
	}
	if !r.Exists("app") || r.Exists("other") {
		t.Error("Exists does not follow <root>/<id>")
	}
}
