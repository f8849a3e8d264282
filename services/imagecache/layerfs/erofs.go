package layerfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SectorSize is the unit of a virtual disk's extent: images are padded to it.
const SectorSize = 512

// Image is an erofs image file made by Erofs. Remove deletes it.
type Image struct {
	// Path of the image file (its size is a multiple of SectorSize).
	Path string
	// Size in bytes.
	Size int64
}

// Remove deletes the image file.
func (i *Image) Remove() error {
	if i == nil || i.Path == "" {
		return nil
	}
	return os.RemoveAll(filepath.Dir(i.Path))
}

// Compression of the file data in erofs images ("" = none).
const (
	CompressionNone  = ""
	CompressionLZ4   = "lz4"
	CompressionLZ4HC = "lz4hc"
)

// mkfsTool is the erofs formatter (erofs-utils).
const mkfsTool = "mkfs.erofs"

// Erofs makes an erofs image of the staged tree. seed (the layer's diffID)
// names the filesystem: its UUID derives from it, so the same layer gives
// the same image. The staged tree is left in place (Remove it).
func (s *Staged) Erofs(ctx context.Context, seed, compression string) (*Image, error) {
	dir, err := os.MkdirTemp(filepath.Dir(s.dir), "erofs-")
	if err != nil {
		return nil, fmt.Errorf("image directory: %w", err)
	}
	img := &Image{Path: filepath.Join(dir, "layer.erofs")}
	if err := build(ctx, s.root, img, seed, compression); err != nil {
		_ = img.Remove()
		return nil, err
	}
	return img, nil
}

func build(ctx context.Context, root string, img *Image, seed, compression string) error {
	args := []string{"--quiet", "-U", uuidOf(seed), "--preserve-mtime"}
	switch compression {
	case CompressionNone:
	case CompressionLZ4, CompressionLZ4HC:
		args = append(args, "-z"+compression)
	default:
		return fmt.Errorf("erofs compression %q: want none, lz4 or lz4hc", compression)
	}
	args = append(args, img.Path, root)
	cmd := exec.CommandContext(ctx, mkfsTool, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", mkfsTool, err, strings.TrimSpace(out.String()))
	}
	f, err := os.OpenFile(img.Path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := zeroBuildTime(f); err != nil {
		return fmt.Errorf("erofs image %s: %w", img.Path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := (fi.Size() + SectorSize - 1) / SectorSize * SectorSize
	if size != fi.Size() {
		if err := f.Truncate(size); err != nil {
			return err
		}
	}
	img.Size = size
	return f.Close()
}

// uuidOf derives a filesystem UUID (version 4 layout) from seed.
func uuidOf(seed string) string {
	h := uuidBytes(seed)
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// uuidBytes is uuidOf's 16 bytes.
func uuidBytes(seed string) []byte {
	h := sha256.Sum256([]byte("podvisor-layer:" + seed))
	h[6] = h[6]&0x0f | 0x40
	h[8] = h[8]&0x3f | 0x80
	return h[:16]
}

var le = binary.LittleEndian

// erofs on-disk superblock (linux/fs/erofs/erofs_fs.h).
const (
	superOffset   = 1024
	superMagic    = 0xE0F5E1E2
	offChecksum   = 4
	offFeatCompat = 8
	offBlkSzBits  = 12
	offBuildTime  = 24
	offBuildNsec  = 32
	featSBChksum  = 0x1
)

// zeroBuildTime sets the superblock's build time to 0 (mkfs.erofs writes
// the current time; per-file mtimes are kept separately) and recomputes the
// superblock checksum when the image has one.
func zeroBuildTime(f *os.File) error {
	head := make([]byte, superOffset+64)
	if _, err := f.ReadAt(head, 0); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	sb := head[superOffset:]
	if binary.LittleEndian.Uint32(sb) != superMagic {
		return errors.New("no erofs superblock")
	}
	bits := sb[offBlkSzBits]
	if bits < 9 || bits > 16 {
		return fmt.Errorf("block size 2^%d out of range", bits)
	}
	block := make([]byte, (1<<bits)-superOffset)
	if _, err := f.ReadAt(block, superOffset); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	binary.LittleEndian.PutUint64(block[offBuildTime:], 0)
	binary.LittleEndian.PutUint32(block[offBuildNsec:], 0)
	if binary.LittleEndian.Uint32(block[offFeatCompat:])&featSBChksum != 0 {
		putChecksum(block)
	}
	_, err := f.WriteAt(block, superOffset)
	return err
}

// putChecksum sets the checksum of the superblock's block (from the
// superblock to the block's end).
func putChecksum(block []byte) {
	le.PutUint32(block[offChecksum:], 0)
	// The kernel checks crc32c(~0, block) without the final inversion.
	le.PutUint32(block[offChecksum:], ^crc32.Checksum(block, crc32.MakeTable(crc32.Castagnoli)))
}

// Check reports why this process cannot write image disks of the given
// compression, or nil. Uncompressed disks (the default) are written by
// Read, which needs no privilege and no tool; compressed ones are staged
// (device nodes, owners, trusted.* xattrs: root) and built by mkfs.erofs.
func Check(compression string) error {
	if compression == CompressionNone {
		return nil
	}
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, fmt.Errorf("not running as root (%s disks are staged first, and layers carry device nodes, owners and trusted.* xattrs)", compression))
	}
	if _, err := exec.LookPath(mkfsTool); err != nil {
		errs = append(errs, fmt.Errorf("%s is not on PATH (%s disks need it; Debian: apt-get install erofs-utils)", mkfsTool, compression))
	}
	return errors.Join(errs...)
}
