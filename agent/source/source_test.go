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

// A configuration disk found at boot is named by its Watch, and Reopen of
// that name reads what the disk says now: a forked VM's disk, changed
// under the guest.
func TestConfigDiskReopenedReadsItAgain(t *testing.T) {
	first, err := configdisk.Bytes(map[string]string{"guestinfo.podvisor.spec": "template"})
	if err != nil {
		t.Fatal(err)
	}
	sysBlock, dev := devices(t, map[string][]byte{"sdb": first})
	s, err := ConfigDisk(sysBlock, dev)
	if err != nil {
		t.Fatal(err)
	}
	w, ok := s.(Watched)
	if !ok || w.Watch() != "configdisk:"+filepath.Join(dev, "sdb") {
		t.Fatalf("watch of the disk found: %v %q, want configdisk:<its device>", ok, w.Watch())
	}
	next, err := configdisk.Bytes(map[string]string{"guestinfo.podvisor.spec": "child"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dev, "sdb"), next, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := Reopen(w.Watch())
	if err != nil {
		t.Fatal(err)
	}
	if v, err := again.Get("guestinfo.podvisor.spec"); err != nil || v != "child" {
		t.Fatalf("spec read again = %q, %v; want child", v, err)
	}
	for _, bad := range []string{"", "configdisk:", "disk:/dev/sdb"} {
		if _, err := Reopen(bad); err == nil || !strings.Contains(err.Error(), "names no source") {
			t.Errorf("Reopen(%q): err = %v, want it to name no source", bad, err)
		}
	}
	if _, err := Reopen("configdisk:" + filepath.Join(dev, "gone")); err == nil {
		t.Error("Reopen of a device that is gone: want an error")
	}
}
