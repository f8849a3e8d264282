package source

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/configdisk"
)

// devices lays out a /sys/block and a /dev with the given disks, as the
// kernel shows them (files stand in for the device nodes).
func devices(t *testing.T, disks map[string][]byte) (sysBlock, dev string) {
	t.Helper()
	root := t.TempDir()
	sysBlock, dev = filepath.Join(root, "sys/block"), filepath.Join(root, "dev")
	for _, d := range []string{sysBlock, dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range disks {
		if err := os.Mkdir(filepath.Join(sysBlock, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if b != nil {
			if err := os.WriteFile(filepath.Join(dev, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return sysBlock, dev
}

func TestConfigDiskFoundAmongDisks(t *testing.T) {
	cfg, err := configdisk.Bytes(map[string]string{"guestinfo.podvisor.spec": "{}"})
	if err != nil {
		t.Fatal(err)
	}
	sysBlock, dev := devices(t, map[string][]byte{
		"sda": make([]byte, 8192), // an unformatted ephemeral disk
		"sdb": []byte("\xe2\xe1\xf5\xe0 erofs superblock, not ours"),
		"sr0": nil, // a drive without a node
		"sdc": cfg,
	})
	s, err := First(
		func() (Source, error) { return nil, ErrUnavailable },
		func() (Source, error) { return ConfigDisk(sysBlock, dev) },
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(s.Name(), "/sdc") {
		t.Fatalf("source %q, want the disk sdc", s.Name())
	}
	if v, err := s.Get("guestinfo.podvisor.spec"); err != nil || v != "{}" {
		t.Fatalf("spec = %q, %v", v, err)
	}
	if _, err := s.Get("guestinfo.podvisor.channel"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: err = %v, want ErrNotFound", err)
	}
}

func TestNoSource(t *testing.T) {
	sysBlock, dev := devices(t, map[string][]byte{"sda": make([]byte, 512)})
	_, err := First(func() (Source, error) { return ConfigDisk(sysBlock, dev) })
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "PODVISOR-CONFIG") {
		t.Fatalf("err = %v, want ErrUnavailable naming the magic", err)
	}
}
