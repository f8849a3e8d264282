package layerfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInvalidLayer marks a layer that cannot be written as a filesystem: the
// layer is bad (or hostile), retrying does not help.
var ErrInvalidLayer = errors.New("invalid layer")

// Whiteout names of the OCI image spec.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
	// overlayXattrs are overlayfs's own; a layer may not carry them.
	overlayXattrs = "trusted.overlay."
	opaqueXattr   = "trusted.overlay.opaque"
	paxXattr      = "SCHILY.xattr."
	xattrNameMax  = 255 // XATTR_NAME_MAX
)

// Options bound what Stage accepts.
type Options struct {
	// TempDir holds the staging directories (default os.TempDir()).
	TempDir string
	// MaxEntries caps the entries of one layer (default 1,000,000).
	MaxEntries int
	// MaxBytes caps the file contents of one layer (default 16 GiB). The
	// caller caps the tar stream; this caps what it expands to (a sparse
	// entry declares holes the stream does not carry).
	MaxBytes int64
}

// Defaults of Options.
const (
	DefaultMaxEntries = 1_000_000
	DefaultMaxBytes   = 16 << 30
)

func (o Options) withDefaults() Options {
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	return o
}

// Staged is a layer's diff applied to a private directory.
type Staged struct {
	dir  string // private parent, removed by Remove
	root string // dir/root: the layer's tree
	// Entries and Bytes count what was written.
	Entries int
	Bytes   int64
}

// Root is the directory holding the staged tree.
func (s *Staged) Root() string { return s.root }

// Remove deletes the staged tree.
func (s *Staged) Remove() error {
	if s == nil || s.dir == "" {
		return nil
	}
	return os.RemoveAll(s.dir)
}

// Stage applies the uncompressed layer tar read from r to a new private
// directory. It reads r up to the tar's end marker; the caller drains the
// rest. On error nothing is left behind.
func Stage(ctx context.Context, r io.Reader, opts Options) (*Staged, error) {
	opts = opts.withDefaults()
	dir, err := os.MkdirTemp(opts.TempDir, "layerfs-")
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	st := &Staged{dir: dir, root: path.Join(dir, "root")}
	if err := os.Mkdir(st.root, 0o755); err != nil {
		_ = st.Remove()
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	if err := StageInto(ctx, r, st.root, opts, st); err != nil {
		_ = st.Remove()
		return nil, err
	}
	return st, nil
}

// StageInto applies the layer to the existing empty directory root
// (Stage's work; the fuzz test points it at a directory of its own).
// counts, when not nil, receives the entry and byte counts.
func StageInto(ctx context.Context, r io.Reader, root string, opts Options, counts *Staged) error {
	opts = opts.withDefaults()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open staging root %s: %w", root, err)
	}
	w := &writer{root: fd, opts: opts, seen: map[string]kind{}, dirIndex: map[string]int{}, buf: make([]byte, 1<<20)}
	defer unix.Close(fd)
	if err := eachEntry(ctx, r, opts.MaxEntries, &w.entries, w.apply); err != nil {
		return err
	}
	if err := w.finishDirs(); err != nil {
		return err
	}
	if counts != nil {
		counts.Entries, counts.Bytes = w.entries, w.bytes
	}
	return nil
}

// kind is what a staged path is.
type kind uint8

const (
	kindImplicitDir kind = iota + 1 // a parent made for a deeper entry
	kindDir
	kindOther // files, links, devices, whiteouts
)

type dirTime struct {
	name  string
	mtime time.Time
}

type writer struct {
	root int
	opts Options
	seen map[string]kind
	dirs []dirTime // explicit and implicit directories, in creation order
	// dirIndex finds an implicit directory in dirs.
	dirIndex map[string]int
	entries  int
	// rootTime is the mtime of the layer's root entry (zero without one).
	rootTime time.Time
	bytes    int64
	buf      []byte
}

// invalid is an ErrInvalidLayer naming the entry.
func invalid(name, format string, args ...any) error {
	return fmt.Errorf("%w: entry %q: %s", ErrInvalidLayer, name, fmt.Sprintf(format, args...))
}

// cleanName turns a tar name into a path relative to the root ("" for the
// root itself), refusing names that climb above it.
func cleanName(name string) (string, error) {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("empty name or NUL in name")
	}
	if len(name) > unix.PathMax {
		return "", fmt.Errorf("name longer than %d bytes", unix.PathMax)
	}
	p := path.Clean("/" + name)
	// Clean of "/…" never keeps a "..", so compare the raw components.
	depth := 0
	for c := range strings.SplitSeq(name, "/") {
		switch c {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return "", errors.New("climbs above the root")
			}
		default:
			depth++
		}
	}
	return strings.TrimPrefix(p, "/"), nil
}

// eachEntry reads the layer's tar entries up to its end marker and hands
// each to apply with what its name says (parseEntry), counting them in
// *entries and refusing more than max. Entries that are not part of the
// tree (skip) are counted but not applied.
func eachEntry(ctx context.Context, r io.Reader, max int, entries *int, apply func(*tar.Header, entryPath, io.Reader) error) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: read tar: %v", ErrInvalidLayer, err)
		}
		*entries++
		if *entries > max {
			return fmt.Errorf("%w: more than %d entries (the entry cap)", ErrInvalidLayer, max)
		}
		e, err := parseEntry(hdr)
		if err != nil {
			return err
		}
		if e.skip {
			continue
		}
		if err := apply(hdr, e, tr); err != nil {
			return err
		}
	}
}

// entryPath is what an entry's name says, before its type is looked at.
type entryPath struct {
	name, dir, base string // cleaned, relative to the root ("" for the root)
	skip            bool   // a global header or other AUFS metadata: not part of the tree
	root            bool   // the layer's root directory
	opaque          bool   // dir's opaque marker
	whiteout        string // the path a whiteout deletes
}

// parseEntry cleans an entry's name and tells whiteouts, opaque markers
// and the root apart from ordinary entries.
func parseEntry(hdr *tar.Header) (entryPath, error) {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return entryPath{}, invalid(hdr.Name, "%v", err)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return entryPath{skip: true}, nil
	}
	dir, base := path.Split(name)
	e := entryPath{name: name, dir: strings.TrimSuffix(dir, "/"), base: base}
	switch {
	case name == "":
		if hdr.Typeflag != tar.TypeDir {
			return e, invalid(hdr.Name, "the root must be a directory")
		}
		e.root = true
	case base == opaqueMarker:
		e.opaque = true
	case strings.HasPrefix(base, whiteoutMeta):
		e.skip = true // other AUFS metadata (.wh..wh.plnk…)
	case strings.HasPrefix(base, whiteoutPrefix):
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "" || target == "." || target == ".." {
			return e, invalid(hdr.Name, "whiteout of no name")
		}
		e.whiteout = path.Join(e.dir, target)
	}
	return e, nil
}

func (w *writer) apply(hdr *tar.Header, e entryPath, body io.Reader) error {
	switch {
	case e.root:
		// The layer's root: its attributes apply to the staging root.
		w.rootTime = hdr.ModTime
		return w.attrs(hdr, w.root, ".", false)
	case e.opaque:
		return w.opaque(hdr.Name, e.dir)
	case e.whiteout != "":
		return w.whiteout(hdr.Name, e.whiteout, hdr.ModTime)
	}
	name, dirName, base := e.name, e.dir, e.base
	if k, dup := w.seen[name]; dup && !(k == kindImplicitDir && hdr.Typeflag == tar.TypeDir) {
		return invalid(hdr.Name, "duplicate entry (or a whiteout of an entry of the same layer)")
	}
	parent, err := w.openDir(hdr.Name, dirName, true)
	if err != nil {
		return err
	}
	defer unix.Close(parent)

	switch hdr.Typeflag {
	case tar.TypeDir:
		if w.seen[name] != kindImplicitDir {
			if err := unix.Mkdirat(parent, base, 0o700); err != nil {
				return fmt.Errorf("entry %q: mkdir: %w", hdr.Name, err)
			}
		}
		implicit := w.seen[name] == kindImplicitDir
		w.seen[name] = kindDir
		if err := w.attrs(hdr, parent, base, false); err != nil {
			return err
		}
		if implicit {
			w.dirs[w.dirIndex[name]].mtime = hdr.ModTime
			return nil
		}
		w.dirs = append(w.dirs, dirTime{name: name, mtime: hdr.ModTime})
		return nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := checkFile(hdr, w.bytes, w.opts.MaxBytes); err != nil {
			return err
		}
		w.seen[name] = kindOther
		fd, err := unix.Openat(parent, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("entry %q: create: %w", hdr.Name, err)
		}
		f := os.NewFile(uintptr(fd), name)
		n, err := io.CopyBuffer(struct{ io.Writer }{f}, body, w.buf)
		w.bytes += n
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			if errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) {
				return invalid(hdr.Name, "contents: %v", err)
			}
			return fmt.Errorf("entry %q: write: %w", hdr.Name, err)
		}
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return invalid(hdr.Name, "symlink with an empty target or NUL in its target")
		}
		w.seen[name] = kindOther
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return fmt.Errorf("entry %q: symlink: %w", hdr.Name, err)
		}
	case tar.TypeLink:
		return w.hardlink(hdr, parent, name, base)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode, err := deviceType(hdr)
		if err != nil {
			return err
		}
		w.seen[name] = kindOther
		if err := unix.Mknodat(parent, base, mode|0o600, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
			return fmt.Errorf("entry %q: mknod: %w", hdr.Name, err)
		}
	default:
		return invalid(hdr.Name, "unsupported entry type %q", string(hdr.Typeflag))
	}
	if err := w.attrs(hdr, parent, base, hdr.Typeflag == tar.TypeSymlink); err != nil {
		return err
	}
	return w.mtime(hdr.Name, parent, base, hdr.ModTime)
}

// checkFile refuses a regular file entry that is sparse (its holes would
// expand past what the stream carries) or whose contents would take the
// layer's file contents (used bytes so far) past limit.
func checkFile(hdr *tar.Header, used, limit int64) error {
	sparse := hdr.Typeflag == tar.TypeGNUSparse
	for k := range hdr.PAXRecords {
		sparse = sparse || strings.HasPrefix(k, "GNU.sparse.")
	}
	if sparse {
		return invalid(hdr.Name, "sparse files are not supported (their holes would expand past what the stream carries)")
	}
	if hdr.Size < 0 || hdr.Size > limit-used {
		return invalid(hdr.Name, "%d bytes, past the cap of %d bytes of file contents per layer", hdr.Size, limit)
	}
	return nil
}

// deviceType is the file type of a device or fifo entry, whose device
// numbers must fit Linux's (12 bits major, 20 bits minor).
func deviceType(hdr *tar.Header) (uint32, error) {
	if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 0xfff || hdr.Devminor > 0xfffff {
		return 0, invalid(hdr.Name, "device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
	}
	switch hdr.Typeflag {
	case tar.TypeChar:
		return unix.S_IFCHR, nil
	case tar.TypeBlock:
		return unix.S_IFBLK, nil
	}
	return unix.S_IFIFO, nil
}

// openDir opens the directory rel below the root without following any
// symlink, making missing components (as root-owned 0755 directories) when
// create is set.
func (w *writer) openDir(entry, rel string, create bool) (int, error) {
	fd, err := unix.Dup(w.root)
	if err != nil {
		return -1, err
	}
	if rel == "" {
		return fd, nil
	}
	walked := ""
	for c := range strings.SplitSeq(rel, "/") {
		walked = path.Join(walked, c)
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, c, 0o755); err == nil {
				w.seen[walked] = kindImplicitDir
				// Made here, so given a fixed mtime: the same layer gives the same tree.
				w.dirIndex[walked] = len(w.dirs)
				w.dirs = append(w.dirs, dirTime{name: walked})
				next, err = unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		unix.Close(fd)
		switch {
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
			return -1, invalid(entry, "its parent %q is not a directory (a symlink is never followed)", walked)
		case errors.Is(err, unix.ENOENT):
			return -1, invalid(entry, "its directory %q is not in the layer", walked)
		case err != nil:
			return -1, fmt.Errorf("entry %q: open %q: %w", entry, walked, err)
		}
		fd = next
	}
	return fd, nil
}

// attrs sets owner, mode and xattrs of base in dir (owner first: chown
// clears setuid bits and file capabilities).
func (w *writer) attrs(hdr *tar.Header, dir int, base string, symlink bool) error {
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<32-2 || hdr.Gid > 1<<32-2 {
		return invalid(hdr.Name, "owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	if err := unix.Fchownat(dir, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("entry %q: chown: %w", hdr.Name, err)
	}
	if !symlink {
		// No AT_SYMLINK_NOFOLLOW for chmod on Linux: base is known not to be
		// a symlink (this writer just made it, and nothing else writes here).
		if err := unix.Fchmodat(dir, base, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("entry %q: chmod: %w", hdr.Name, err)
		}
	}
	var names []string
	for k := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, paxXattr); ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		if strings.HasPrefix(name, overlayXattrs) {
			return invalid(hdr.Name, "xattr %s is overlayfs metadata, which a layer may not carry", name)
		}
		if name == "" || len(name) > xattrNameMax {
			return invalid(hdr.Name, "xattr name %q is empty or too long", name)
		}
		if err := unix.Lsetxattr(procPath(dir, base), name, []byte(hdr.PAXRecords[paxXattr+name]), 0); err != nil {
			return fmt.Errorf("entry %q: xattr %s: %w", hdr.Name, name, err)
		}
	}
	return nil
}

// procPath names base inside the open directory dir: the kernel resolves
// /proc/self/fd/N to that very directory, and l* calls do not follow base.
func procPath(dir int, base string) string {
	return "/proc/self/fd/" + strconv.Itoa(dir) + "/" + base
}

func (w *writer) mtime(entry string, dir int, base string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	if t.IsZero() || t.Unix() < 0 {
		ts = []unix.Timespec{{}, {}}
	}
	if err := unix.UtimesNanoAt(dir, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("entry %q: set mtime: %w", entry, err)
	}
	return nil
}

// whiteout records the deletion of rel as overlayfs does: a 0/0 character
// device of that name.
func (w *writer) whiteout(entry, rel string, mtime time.Time) error {
	if _, dup := w.seen[rel]; dup {
		return invalid(entry, "whiteout of %q, which the same layer has", rel)
	}
	dirName, base := path.Split(rel)
	parent, err := w.openDir(entry, strings.TrimSuffix(dirName, "/"), true)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	w.seen[rel] = kindOther
	if err := unix.Mknodat(parent, base, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("entry %q: whiteout: %w", entry, err)
	}
	return w.mtime(entry, parent, base, mtime)
}

// opaque marks directory rel as hiding what lower layers have in it.
func (w *writer) opaque(entry, rel string) error {
	fd, err := w.openDir(entry, rel, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if rel != "" && w.seen[rel] == 0 {
		w.seen[rel] = kindImplicitDir
	}
	if err := unix.Fsetxattr(fd, opaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("entry %q: opaque marker: %w", entry, err)
	}
	return nil
}

// hardlink links name to an earlier non-directory entry of the layer.
func (w *writer) hardlink(hdr *tar.Header, parent int, name, base string) error {
	if path.IsAbs(hdr.Linkname) {
		return invalid(hdr.Name, "hard link to the absolute path %q", hdr.Linkname)
	}
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return invalid(hdr.Name, "hard link target %q: %v", hdr.Linkname, err)
	}
	if w.seen[target] != kindOther || strings.HasPrefix(path.Base(target), whiteoutPrefix) {
		return invalid(hdr.Name, "hard link to %q, which is not an earlier file of the layer", hdr.Linkname)
	}
	tdir, tbase := path.Split(target)
	tfd, err := w.openDir(hdr.Name, strings.TrimSuffix(tdir, "/"), false)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("entry %q: stat link target: %w", hdr.Name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
		return invalid(hdr.Name, "hard link to the whiteout %q", hdr.Linkname)
	}
	w.seen[name] = kindOther
	if err := unix.Linkat(tfd, tbase, parent, base, 0); err != nil {
		return fmt.Errorf("entry %q: link: %w", hdr.Name, err)
	}
	return nil
}

// finishDirs sets directory mtimes once nothing more is written into
// them, deepest first.
func (w *writer) finishDirs() error {
	for i := len(w.dirs) - 1; i >= 0; i-- {
		d := w.dirs[i]
		dirName, base := path.Split(d.name)
		parent, err := w.openDir(d.name, strings.TrimSuffix(dirName, "/"), false)
		if err != nil {
			return err
		}
		err = w.mtime(d.name, parent, base, d.mtime)
		unix.Close(parent)
		if err != nil {
			return err
		}
	}
	return w.mtime(".", w.root, ".", w.rootTime)
}
