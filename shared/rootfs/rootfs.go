package rootfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// ExtractImage flattens img (its layers applied in order, whiteouts
// honoured) and extracts it under dir.
func ExtractImage(img v1.Image, dir string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	return Extract(rc, dir)
}

// Extract writes the flattened filesystem in the tar stream r (as
// mutate.Extract produces it: whiteouts already applied) under dir, which
// it creates. Directories, regular files, symbolic and hard links are
// written with their modes, and with their owners when running as root;
// devices and FIFOs are skipped (a guest makes its own /dev).
func Extract(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("rootfs: read the image: %w", err)
		}
		if err := extractEntry(root, tr, h); err != nil {
			return fmt.Errorf("rootfs: entry %q: %w", h.Name, err)
		}
	}
}

func extractEntry(root *os.Root, tr *tar.Reader, h *tar.Header) error {
	name := path.Clean("/" + h.Name)[1:]
	if name == "" {
		return nil // the root itself
	}
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	mode := os.FileMode(h.Mode & 0o7777)
	switch h.Typeflag {
	case tar.TypeDir:
		if err := root.MkdirAll(name, 0o700); err != nil {
			return err
		}
	case tar.TypeReg:
		// A file replaces what stood at its name (a link the same image
		// made there earlier): it is not written through it.
		if st, err := root.Lstat(name); err == nil && !st.IsDir() {
			_ = root.Remove(name)
		}
		f, err := root.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	case tar.TypeSymlink:
		_ = root.Remove(name)
		return lchown(root, name, h, root.Symlink(h.Linkname, name))
	case tar.TypeLink:
		_ = root.Remove(name)
		return root.Link(path.Clean("/" + h.Linkname)[1:], name)
	default:
		return nil
	}
	if err := root.Chmod(name, mode); err != nil {
		return err
	}
	return lchown(root, name, h, nil)
}

// lchown gives name the entry's owner when running as root, unless err
// (the entry's own creation) failed.
func lchown(root *os.Root, name string, h *tar.Header, err error) error {
	if err != nil || os.Geteuid() != 0 {
		return err
	}
	return root.Lchown(name, h.Uid, h.Gid)
}
