package disks

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/podvisor/podvisor/agent/privtest"
)

// The ephemeral disk's format writes little (a pod's start waits for it):
// lazy inode tables and journal, no blocks reserved for online growth; it
// keeps the journal and the encrypt feature.
func TestFormatWritesLittle(t *testing.T) {
	privtest.RequireTools(t, "mkfs.ext4")
	disk := filepath.Join(t.TempDir(), "disk0")
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := mkfsExt4(disk); err != nil {
		t.Fatal(err)
	}
	if ok, err := hasExt4(disk); err != nil || !ok {
		t.Fatalf("hasExt4 after the format = %v, %v", ok, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(disk, &st); err != nil {
		t.Fatal(err)
	}
	if written := st.Blocks * 512; written > 1<<20 {
		t.Errorf("formatting an 8 GiB disk wrote %d KiB, want under 1 MiB", written>>10)
	}
	sb := make([]byte, 1024)
	f, err = os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	const (
		compatHasJournal   = 0x4
		compatResizeInode  = 0x10
		incompatEncrypt    = 0x10000
		offFeatureCompat   = 0x5C
		offFeatureIncompat = 0x60
	)
	compat := binary.LittleEndian.Uint32(sb[offFeatureCompat:])
	incompat := binary.LittleEndian.Uint32(sb[offFeatureIncompat:])
	if compat&compatResizeInode != 0 {
		t.Error("the format reserved blocks for online growth (resize_inode)")
	}
	if compat&compatHasJournal == 0 {
		t.Error("the format has no journal")
	}
	if incompat&incompatEncrypt == 0 {
		t.Error("the format lacks the encrypt feature")
	}
}
