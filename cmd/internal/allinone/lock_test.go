package allinone

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSecondUpOnOneStateDirIsRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{StateDir: dir, Clusters: 1, HostsPerCluster: 1, Seed: 1}
	first, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.WriteEnv(); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(context.Background(), cfg); !errors.Is(err, ErrStateDirInUse) {
		t.Fatalf("second Start on %s: err = %v, want ErrStateDirInUse", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "env")); err != nil {
		t.Fatalf("the refused second start touched the first one's env file: %v", err)
	}
	first.Close()
	if _, err := os.Stat(filepath.Join(dir, "env")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("env file outlives the system that wrote it: %v", err)
	}
	again, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start after Close: %v", err)
	}
	again.Close()
}
