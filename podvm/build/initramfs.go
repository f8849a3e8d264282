package build

import (
	"bufio"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cavaliergopher/cpio"
	"golang.org/x/sys/unix"
)

// entry is one file of the initramfs: a directory, a symlink (Link) or a
// regular file copied from Src on the build machine or, without Src, made
// of Data.
type entry struct {
	Mode os.FileMode
	Src  string
	Data []byte
	Link string
	// Rdev is a device node's number (major, minor).
	Rdev [2]int
}

// Tree is the initramfs's content, keyed by absolute path in the guest.
type Tree map[string]entry

// Dir adds a directory (and its parents).
func (t Tree) Dir(p string) {
	for p != "/" && p != "." {
		if _, ok := t[p]; !ok {
			t[p] = entry{Mode: os.ModeDir | 0o755}
		}
		p = path.Dir(p)
	}
}

// File adds the build machine's file src at guest path p.
func (t Tree) File(p, src string, perm os.FileMode) {
	t.Dir(path.Dir(p))
	t[p] = entry{Mode: perm, Src: src}
}

// Content adds a regular file made of data at guest path p (a file the
// build writes itself, with nothing to copy and no temporary file).
func (t Tree) Content(p string, data []byte, perm os.FileMode) {
	t.Dir(path.Dir(p))
	t[p] = entry{Mode: perm, Data: data}
}

// Symlink adds a symlink at p pointing to target.
func (t Tree) Symlink(p, target string) {
	t.Dir(path.Dir(p))
	t[p] = entry{Mode: os.ModeSymlink | 0o777, Link: target}
}

// Executable adds a binary and, when it is dynamically linked, its ELF
// interpreter and every shared library it needs (found in libDirs), at the
// paths the loader looks for them.
func (t Tree) Executable(p, src string, libDirs []string) error {
	t.File(p, src, 0o755)
	return t.libraries(src, libDirs, map[string]bool{})
}

func (t Tree) libraries(src string, libDirs []string, seen map[string]bool) error {
	f, err := elf.Open(src)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(prog.Open())
		if err != nil {
			return fmt.Errorf("%s: interpreter: %w", src, err)
		}
		interp := strings.TrimRight(string(b), "\x00")
		real, err := filepath.EvalSymlinks(interp)
		if err != nil {
			return fmt.Errorf("%s: interpreter %s: %w", src, interp, err)
		}
		t.File(interp, real, 0o755)
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: shared libraries: %w", src, err)
	}
	for _, lib := range needed {
		if seen[lib] {
			continue
		}
		seen[lib] = true
		found := ""
		for _, d := range libDirs {
			if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
				found = filepath.Join(d, lib)
				break
			}
		}
		if found == "" {
			return fmt.Errorf("%s needs %s, found in none of %v", src, lib, libDirs)
		}
		real, err := filepath.EvalSymlinks(found)
		if err != nil {
			return err
		}
		t.File(found, real, 0o755)
		if err := t.libraries(real, libDirs, seen); err != nil {
			return err
		}
	}
	return nil
}

// CharDevice adds a character device node: the kernel opens
// /dev/console for init's standard streams before any devtmpfs exists.
func (t Tree) CharDevice(p string, major, minor int) {
	t.Dir(path.Dir(p))
	t[p] = entry{Mode: os.ModeDevice | os.ModeCharDevice | 0o600, Rdev: [2]int{major, minor}}
}

// WriteInitramfs writes t as a gzip-compressed newc cpio archive.
func (t Tree) WriteInitramfs(w io.Writer) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 1<<20)
	cw := cpio.NewWriter(bw)
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents before children
	for _, p := range paths {
		e := t[p]
		hdr := &cpio.Header{Name: strings.TrimPrefix(p, "/"), Mode: cpio.FileMode(e.Mode.Perm())}
		var body []byte
		switch {
		case e.Mode.IsDir():
			hdr.Mode |= cpio.TypeDir
		case e.Mode&os.ModeCharDevice != 0:
			hdr.Mode |= cpio.TypeChar
			hdr.DeviceID = int(unix.Mkdev(uint32(e.Rdev[0]), uint32(e.Rdev[1])))
		case e.Mode&os.ModeSymlink != 0:
			hdr.Mode |= cpio.TypeSymlink
			body = []byte(e.Link)
			hdr.Size = int64(len(body))
		default:
			hdr.Mode |= cpio.TypeReg
			b := e.Data
			if e.Src != "" {
				var err error
				if b, err = os.ReadFile(e.Src); err != nil {
					return fmt.Errorf("initramfs %s: %w", p, err)
				}
			}
			body = b
			hdr.Size = int64(len(b))
		}
		if err := cw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("initramfs %s: %w", p, err)
		}
		if _, err := cw.Write(body); err != nil {
			return fmt.Errorf("initramfs %s: %w", p, err)
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// ModuleOrder resolves the named modules (file names without .ko, such as
// "vmw_pvscsi") and their dependencies through modDir's modules.dep, and
// returns their paths relative to modDir in load order.
func ModuleOrder(modDir string, names []string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("modules: %w", err)
	}
	deps := map[string][]string{}
	byName := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		base := strings.TrimSuffix(path.Base(mod), ".ko")
		byName[base] = mod
		byName[strings.ReplaceAll(base, "-", "_")] = mod
	}
	var order []string
	done := map[string]bool{}
	var visit func(m string)
	visit = func(m string) {
		if done[m] {
			return
		}
		done[m] = true
		for _, d := range deps[m] {
			visit(d)
		}
		order = append(order, m)
	}
	for _, n := range names {
		m, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("module %s: not in %s/modules.dep (built into this kernel, or not shipped)", n, modDir)
		}
		visit(m)
	}
	return order, nil
}
