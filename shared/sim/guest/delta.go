package guest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A delta disk (a disk created as the child of another, such as a pod VM's
// disk 0 over the pre-formatted ephemeral template) reads its unwritten
// blocks from its parent. A hypervisor does that at every read; a simulated
// guest's disk is a plain file behind a loop device, so the child's extent
// is given its parent's content once, on the first boot, before the guest
// sees it. What a parent holds besides zeros is read once per parent file
// and kept, so that each child costs a few block writes, not a scan of its
// parent.

// deltaBlock is the unit in which a parent's content is compared with
// zeros: ext4's block size.
const deltaBlock = 4096

// baseImage is what a parent extent holds besides zeros.
type baseImage struct {
	size    int64
	modTime time.Time
	runs    []run
}

// run is written data at an offset of a parent extent.
type run struct {
	off  int64
	data []byte
}

// bases caches the content of parent extents by path.
type bases struct {
	mu     sync.Mutex
	images map[string]*baseImage
}

// materialize gives a child disk's extent its parent's content when the
// child was never written (its extent is missing or empty). It writes a
// temporary file and renames it over the extent, so a boot interrupted half
// way leaves the extent as it was.
func (b *bases) materialize(path, parent string) error {
	if parent == "" {
		return nil
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		return nil // written before: the child's own content
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	img, err := b.image(parent)
	if err != nil {
		return fmt.Errorf("parent disk %s: %w", parent, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".delta-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	for _, r := range img.runs {
		if _, err := tmp.WriteAt(r.data, r.off); err != nil {
			tmp.Close()
			return fmt.Errorf("write %s: %w", tmp.Name(), err)
		}
	}
	if err := tmp.Truncate(img.size); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// image returns the parent extent's content, read once per version of the
// file (its size and modification time).
func (b *bases) image(path string) (*baseImage, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if img := b.images[path]; img != nil && img.size == fi.Size() && img.modTime.Equal(fi.ModTime()) {
		return img, nil
	}
	img, err := readBase(path)
	if err != nil {
		return nil, err
	}
	if b.images == nil {
		b.images = map[string]*baseImage{}
	}
	b.images[path] = img
	return img, nil
}

// readBase reads the blocks of a file that are not zero, skipping its holes
// (SEEK_DATA) and the zero blocks of its data (an extent uploaded through
// the datastore file API holds its zeros as data).
func readBase(path string) (*baseImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	img := &baseImage{size: fi.Size(), modTime: fi.ModTime()}
	zero := make([]byte, deltaBlock)
	buf := make([]byte, 64*deltaBlock)
	for off := int64(0); off < img.size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return nil, fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole: %w", err)
		}
		for pos := data; pos < hole; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			if n == 0 {
				break
			}
			for i := 0; i < n; i += deltaBlock {
				blk := buf[i:min(i+deltaBlock, n)]
				if bytes.Equal(blk, zero[:len(blk)]) {
					continue
				}
				at := pos + int64(i)
				if last := len(img.runs) - 1; last >= 0 && img.runs[last].off+int64(len(img.runs[last].data)) == at {
					img.runs[last].data = append(img.runs[last].data, blk...)
				} else {
					img.runs = append(img.runs, run{off: at, data: bytes.Clone(blk)})
				}
			}
			pos += int64(n)
		}
		off = hole
	}
	return img, nil
}
