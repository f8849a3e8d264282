package layerfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// inlineBudget caps the bytes of file tails a Layer keeps in memory until
// Erofs places them beside their inodes; past it, tails take a block of
// their own (a layer of a million small files stays within memory).
const inlineBudget = 64 << 20

// Layer is a layer being written as an erofs image straight from its tar
// stream: file data goes to the image file as it streams, block-aligned,
// and the tree (names, inodes, xattrs, small file tails) is kept in memory
// until Erofs lays out the metadata after the data. Nothing is staged on a
// filesystem, and no privilege is needed: owners, device nodes and
// trusted.* xattrs are only bytes of the image.
type Layer struct {
	tmp  string // private directory holding the image file
	f    *os.File
	buf  []byte
	next int64 // next free data block (block 0 holds the superblock)
	root *node
	// nodes are the layer's paths ("" for the root) and what they are.
	nodes   map[string]*node
	opts    Options
	inlined int64 // tail bytes kept in memory
	// Entries and Bytes count what was written.
	Entries int
	Bytes   int64
}

// node is one inode of the image.
type node struct {
	mode     uint32 // type and permission bits
	uid, gid uint32
	mtime    int64
	nsec     uint32
	rdev     uint32 // new_encode_dev(major, minor)
	size     int64
	blkaddr  int64  // first block of the data's whole blocks
	tail     []byte // the data's last partial block, kept inline
	xattrs   map[string]string
	nlink    uint32
	kind     kind
	parent   *node
	children map[string]*node // directories only

	// Set by Erofs.
	nid      uint64
	ino      uint32
	dirNames [][]string // a directory's names, by dirent block
}

func (n *node) isDir() bool { return n.mode&unix.S_IFMT == unix.S_IFDIR }

// Read applies the uncompressed layer tar read from r to a new erofs image
// in the making, in a private directory under opts.TempDir, with the same
// checks as Stage (the same hostile entries are refused with the same
// reasons). It reads r up to the tar's end marker; the caller drains the
// rest, checks the layer's digests, and only then calls Erofs. On error
// nothing is left behind.
func Read(ctx context.Context, r io.Reader, opts Options) (*Layer, error) {
	opts = opts.withDefaults()
	dir, err := os.MkdirTemp(opts.TempDir, "layerfs-")
	if err != nil {
		return nil, fmt.Errorf("image directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "layer.erofs"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("image file: %w", err)
	}
	root := &node{mode: unix.S_IFDIR | 0o755, kind: kindDir, children: map[string]*node{}}
	root.parent = root
	l := &Layer{tmp: dir, f: f, buf: make([]byte, 1<<20), next: 1, root: root,
		nodes: map[string]*node{"": root}, opts: opts}
	if err := eachEntry(ctx, r, opts.MaxEntries, &l.Entries, l.apply); err != nil {
		_ = l.Remove()
		return nil, err
	}
	return l, nil
}

// Remove deletes the image in the making. Once Erofs has made the image,
// the Image owns it and Remove does nothing.
func (l *Layer) Remove() error {
	if l == nil || l.tmp == "" {
		return nil
	}
	_ = l.f.Close()
	return os.RemoveAll(l.tmp)
}

func (l *Layer) apply(hdr *tar.Header, e entryPath, body io.Reader) error {
	switch {
	case len(e.base) > maxNameLen && e.whiteout == "", len(path.Base(e.whiteout)) > maxNameLen:
		return invalid(hdr.Name, "a name of more than %d bytes", maxNameLen)
	case e.root:
		return l.attrs(hdr, l.root, unix.S_IFDIR)
	case e.opaque:
		d, err := l.openDir(hdr.Name, e.dir, true)
		if err != nil {
			return err
		}
		if d.xattrs == nil {
			d.xattrs = map[string]string{}
		}
		d.xattrs[opaqueXattr] = "y"
		return nil
	case e.whiteout != "":
		return l.whiteout(hdr, e.whiteout)
	}
	name, dirName, base := e.name, e.dir, e.base
	if n, dup := l.nodes[name]; dup && !(n.kind == kindImplicitDir && hdr.Typeflag == tar.TypeDir) {
		return invalid(hdr.Name, "duplicate entry (or a whiteout of an entry of the same layer)")
	}
	parent, err := l.openDir(hdr.Name, dirName, true)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		n := l.nodes[name]
		if n == nil {
			n = l.add(parent, name, base, &node{children: map[string]*node{}})
		}
		n.kind = kindDir
		return l.attrs(hdr, n, unix.S_IFDIR)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := checkFile(hdr, l.Bytes, l.opts.MaxBytes); err != nil {
			return err
		}
		n := l.add(parent, name, base, &node{kind: kindOther})
		if err := l.attrs(hdr, n, unix.S_IFREG); err != nil {
			return err
		}
		if err := l.data(hdr.Name, n, body, hdr.Size); err != nil {
			return err
		}
		l.Bytes += hdr.Size
		return nil
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return invalid(hdr.Name, "symlink with an empty target or NUL in its target")
		}
		if len(hdr.Linkname) >= unix.PathMax {
			return invalid(hdr.Name, "symlink target of more than %d bytes", unix.PathMax-1)
		}
		n := l.add(parent, name, base, &node{kind: kindOther})
		if err := l.attrs(hdr, n, unix.S_IFLNK); err != nil {
			return err
		}
		return l.data(hdr.Name, n, strings.NewReader(hdr.Linkname), int64(len(hdr.Linkname)))
	case tar.TypeLink:
		return l.hardlink(hdr, parent, name, base)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		typ, err := deviceType(hdr)
		if err != nil {
			return err
		}
		n := l.add(parent, name, base, &node{kind: kindOther})
		if typ != unix.S_IFIFO {
			major, minor := uint32(hdr.Devmajor), uint32(hdr.Devminor)
			n.rdev = minor&0xff | major<<8 | (minor&^0xff)<<12
		}
		return l.attrs(hdr, n, typ)
	default:
		return invalid(hdr.Name, "unsupported entry type %q", string(hdr.Typeflag))
	}
}

// add links the new node n as base into parent.
func (l *Layer) add(parent *node, name, base string, n *node) *node {
	n.parent = parent
	n.nlink = 1
	parent.children[base] = n
	l.nodes[name] = n
	return n
}

// dir returns the directory rel, making missing components (root-owned
// 0755, mtime 0) when create is set. No component may be anything but a
// directory: a path through a symlink or a file is refused.
func (l *Layer) openDir(entry, rel string, create bool) (*node, error) {
	d := l.root
	if rel == "" {
		return d, nil
	}
	walked := ""
	for c := range strings.SplitSeq(rel, "/") {
		walked = path.Join(walked, c)
		next := d.children[c]
		switch {
		case next == nil && create:
			next = l.add(d, walked, c, &node{mode: unix.S_IFDIR | 0o755, kind: kindImplicitDir, children: map[string]*node{}})
			inheritGroup(next, d)
		case next == nil:
			return nil, invalid(entry, "its directory %q is not in the layer", walked)
		case !next.isDir():
			return nil, invalid(entry, "its parent %q is not a directory (a symlink is never followed)", walked)
		}
		d = next
	}
	return d, nil
}

// inheritGroup gives n, made by the layer's writer rather than described
// by an entry (a parent directory the layer does not list, a whiteout),
// what Linux gives a new inode in a setgid directory: the directory's
// group, and for a directory the setgid bit. Stage gets this from the
// kernel, and so does a runtime extracting the layer to a directory.
func inheritGroup(n, dir *node) {
	if dir.mode&unix.S_ISGID == 0 {
		return
	}
	n.gid = dir.gid
	if n.isDir() {
		n.mode |= unix.S_ISGID
	}
}

// attrs sets type, owner, mode, mtime and xattrs of n from hdr.
func (l *Layer) attrs(hdr *tar.Header, n *node, typ uint32) error {
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<32-2 || hdr.Gid > 1<<32-2 {
		return invalid(hdr.Name, "owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	n.uid, n.gid = uint32(hdr.Uid), uint32(hdr.Gid)
	n.mode = typ | uint32(hdr.Mode&0o7777)
	if typ == unix.S_IFLNK {
		n.mode = typ | 0o777
	}
	n.mtime, n.nsec = mtimeOf(hdr.ModTime)
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, paxXattr)
		if !ok {
			continue
		}
		if strings.HasPrefix(name, overlayXattrs) {
			return invalid(hdr.Name, "xattr %s is overlayfs metadata, which a layer may not carry", name)
		}
		if name == "" || len(name) > xattrNameMax {
			return invalid(hdr.Name, "xattr name %q is empty or too long", name)
		}
		if _, _, ok := xattrIndex(name); !ok {
			return invalid(hdr.Name, "xattr %s is in no namespace erofs stores (user., trusted., security., POSIX ACLs)", name)
		}
		if len(v) > xattrValueMax {
			return invalid(hdr.Name, "xattr %s of %d bytes, more than %d", name, len(v), xattrValueMax)
		}
		if n.xattrs == nil {
			n.xattrs = map[string]string{}
		}
		n.xattrs[name] = v
	}
	if x := xattrSize(n.xattrs); inodeExtSize+x > blockSize {
		return invalid(hdr.Name, "xattrs of %d bytes, more than the %d an inode's block holds", x, blockSize-inodeExtSize)
	}
	return nil
}

// mtimeOf is t as seconds and nanoseconds; times before 1970 become 0.
func mtimeOf(t time.Time) (int64, uint32) {
	if t.IsZero() || t.Unix() < 0 {
		return 0, 0
	}
	return t.Unix(), uint32(t.Nanosecond())
}

// xattrIndex splits an xattr name into erofs's prefix index and the rest.
func xattrIndex(name string) (uint8, string, bool) {
	for _, p := range xattrPrefixes {
		if p.whole && name == p.prefix {
			return p.index, "", true
		}
		if suffix, ok := strings.CutPrefix(name, p.prefix); !p.whole && ok && suffix != "" {
			return p.index, suffix, true
		}
	}
	return 0, "", false
}

// xattrSize is the bytes the xattrs take after the inode (0 without any).
func xattrSize(xs map[string]string) int {
	if len(xs) == 0 {
		return 0
	}
	size := xattrHeaderSize
	for name, v := range xs {
		_, suffix, _ := xattrIndex(name)
		size += int(alignUp(int64(xattrEntrySize+len(suffix)+len(v)), 4))
	}
	return size
}

// data writes n's size bytes from body: whole blocks go to the image's
// data area as they stream; the last partial block stays in memory, to sit
// inline beside the inode, when it fits there and the budget allows.
func (l *Layer) data(entry string, n *node, body io.Reader, size int64) error {
	n.size = size
	n.blkaddr = l.next
	whole := size &^ (blockSize - 1)
	off := l.next * blockSize
	for done := int64(0); done < size; {
		chunk := l.buf[:min(size-done, int64(len(l.buf)))]
		got, err := io.ReadFull(body, chunk)
		if err != nil {
			if errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return invalid(entry, "contents: %v", io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("entry %q: read: %w", entry, err)
		}
		if done+int64(got) == size && size > whole {
			// The last chunk ends with the tail: keep it inline if it fits.
			tail := chunk[got-int(size-whole):]
			if inodeExtSize+xattrSize(n.xattrs)+len(tail) <= blockSize && l.inlined+int64(len(tail)) <= inlineBudget {
				n.tail = slices.Clone(tail)
				l.inlined += int64(len(tail))
				chunk = chunk[:got-len(tail)]
			}
		}
		if _, err := l.f.WriteAt(chunk, off+done); err != nil {
			return fmt.Errorf("entry %q: write: %w", entry, err)
		}
		done += int64(got)
	}
	// A tail not kept inline has a block of its own (the rest of it is a
	// hole, read as zeros).
	l.next += (size - int64(len(n.tail)) + blockSize - 1) / blockSize
	return nil
}

// whiteout records the deletion of rel as overlayfs does: a 0/0 character
// device of that name, owned by root, mode 0.
func (l *Layer) whiteout(hdr *tar.Header, rel string) error {
	if _, dup := l.nodes[rel]; dup {
		return invalid(hdr.Name, "whiteout of %q, which the same layer has", rel)
	}
	dirName, base := path.Split(rel)
	parent, err := l.openDir(hdr.Name, strings.TrimSuffix(dirName, "/"), true)
	if err != nil {
		return err
	}
	n := l.add(parent, rel, base, &node{mode: unix.S_IFCHR, kind: kindOther})
	inheritGroup(n, parent)
	n.mtime, n.nsec = mtimeOf(hdr.ModTime)
	return nil
}

// hardlink links name to an earlier non-directory entry of the layer.
func (l *Layer) hardlink(hdr *tar.Header, parent *node, name, base string) error {
	if path.IsAbs(hdr.Linkname) {
		return invalid(hdr.Name, "hard link to the absolute path %q", hdr.Linkname)
	}
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return invalid(hdr.Name, "hard link target %q: %v", hdr.Linkname, err)
	}
	t := l.nodes[target]
	if t == nil || t.kind != kindOther || strings.HasPrefix(path.Base(target), whiteoutPrefix) {
		return invalid(hdr.Name, "hard link to %q, which is not an earlier file of the layer", hdr.Linkname)
	}
	if t.mode&unix.S_IFMT == unix.S_IFCHR && t.rdev == 0 {
		return invalid(hdr.Name, "hard link to the whiteout %q", hdr.Linkname)
	}
	t.nlink++
	parent.children[base] = t
	l.nodes[name] = t
	return nil
}

// Erofs completes the image: the inodes, xattrs, inline tails and
// directories after the file data, then the superblock. seed (the layer's
// diffID) names the filesystem, as with Staged.Erofs; the same layer gives
// the same bytes. The Layer hands the image over: Remove the Image.
func (l *Layer) Erofs(seed string) (*Image, error) {
	order := l.order()
	// Directory contents: sorted names in dirent blocks. Their sizes
	// decide what is inline, which decides the nids the dirents hold.
	for _, n := range order {
		if n.isDir() {
			n.dirNames = packDir(n)
			last := n.dirNames[len(n.dirNames)-1]
			lastUsed := direntBytes(last)
			n.size = int64(len(n.dirNames)-1)*blockSize + int64(lastUsed)
			n.tail = nil
			if lastUsed < blockSize && inodeExtSize+xattrSize(n.xattrs)+lastUsed <= blockSize {
				n.tail = make([]byte, lastUsed) // filled once the nids are known
			}
		}
	}
	var pos int64
	for i, n := range order {
		isize := int64(inodeExtSize + xattrSize(n.xattrs) + len(n.tail))
		pos = alignUp(pos, 1<<nidShift)
		if pos%blockSize+isize > blockSize {
			pos = alignUp(pos, blockSize)
		}
		n.nid, n.ino = uint64(pos>>nidShift), uint32(i+1)
		pos += isize
	}
	metaBlk := l.next
	meta := make([]byte, alignUp(pos, blockSize))
	next := metaBlk + int64(len(meta))/blockSize
	var dirData []byte
	for _, n := range order {
		if !n.isDir() {
			continue
		}
		blocks := n.dirNames
		if n.tail != nil {
			copy(n.tail, direntBlock(n, blocks[len(blocks)-1], len(n.tail)))
			blocks = blocks[:len(blocks)-1]
		}
		n.blkaddr = next
		for _, b := range blocks {
			dirData = append(dirData, direntBlock(n, b, blockSize)...)
			next++
		}
	}
	for _, n := range order {
		putInode(meta[n.nid<<nidShift:], n)
	}
	if next > 1<<32-1 {
		return nil, fmt.Errorf("%w: an image of %d blocks, past erofs's 32-bit block addresses", ErrInvalidLayer, next)
	}
	if _, err := l.f.WriteAt(meta, metaBlk*blockSize); err != nil {
		return nil, fmt.Errorf("write image metadata: %w", err)
	}
	if _, err := l.f.WriteAt(dirData, (metaBlk+int64(len(meta))/blockSize)*blockSize); err != nil {
		return nil, fmt.Errorf("write image directories: %w", err)
	}
	sb := make([]byte, blockSize-superOffset)
	le.PutUint32(sb, superMagic)
	le.PutUint32(sb[offFeatCompat:], featSBChksum)
	sb[offBlkSzBits] = blockBits
	le.PutUint16(sb[offRootNid:], uint16(l.root.nid))
	le.PutUint64(sb[offInos:], uint64(len(order)))
	le.PutUint32(sb[offBlocks:], uint32(next))
	le.PutUint32(sb[offMetaBlk:], uint32(metaBlk))
	copy(sb[offUUID:], uuidBytes(seed))
	putChecksum(sb)
	if _, err := l.f.WriteAt(sb, superOffset); err != nil {
		return nil, fmt.Errorf("write superblock: %w", err)
	}
	if err := l.f.Truncate(next * blockSize); err != nil {
		return nil, fmt.Errorf("write image: %w", err)
	}
	if err := l.f.Close(); err != nil {
		return nil, fmt.Errorf("write image: %w", err)
	}
	img := &Image{Path: l.f.Name(), Size: next * blockSize}
	l.tmp = "" // the Image owns the directory now
	return img, nil
}

// order lists every inode once, the root first (its nid must fit the
// superblock's 16 bits), then depth first in name order.
func (l *Layer) order() []*node {
	var out []*node
	seen := map[*node]bool{}
	var walk func(n *node)
	walk = func(n *node) {
		if seen[n] {
			return
		}
		seen[n] = true
		out = append(out, n)
		if !n.isDir() {
			return
		}
		for _, name := range slices.Sorted(maps.Keys(n.children)) {
			walk(n.children[name])
		}
	}
	walk(l.root)
	return out
}

// packDir splits a directory's names, with "." and "..", sorted bytewise
// (the kernel looks names up by binary search), into dirent blocks.
func packDir(n *node) [][]string {
	names := append(slices.Collect(maps.Keys(n.children)), ".", "..")
	slices.Sort(names)
	var blocks [][]string
	var cur []string
	used := 0
	for _, name := range names {
		if used+direntSize+len(name) > blockSize {
			blocks = append(blocks, cur)
			cur, used = nil, 0
		}
		cur = append(cur, name)
		used += direntSize + len(name)
	}
	return append(blocks, cur)
}

func direntBytes(names []string) int {
	size := 0
	for _, name := range names {
		size += direntSize + len(name)
	}
	return size
}

// direntBlock serializes one block of d's dirents, size bytes long.
func direntBlock(d *node, names []string, size int) []byte {
	b := make([]byte, size)
	nameoff := direntSize * len(names)
	for i, name := range names {
		child := d.children[name]
		switch name {
		case ".":
			child = d
		case "..":
			child = d.parent
		}
		de := b[i*direntSize:]
		le.PutUint64(de, child.nid)
		le.PutUint16(de[8:], uint16(nameoff))
		de[10] = fileType(child.mode)
		copy(b[nameoff:], name)
		nameoff += len(name)
	}
	return b
}

func fileType(mode uint32) uint8 {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return ftReg
	case unix.S_IFDIR:
		return ftDir
	case unix.S_IFCHR:
		return ftChr
	case unix.S_IFBLK:
		return ftBlk
	case unix.S_IFIFO:
		return ftFifo
	case unix.S_IFLNK:
		return ftSymlink
	}
	return 0
}

// putInode writes n's extended inode, its xattrs and its inline tail.
func putInode(b []byte, n *node) {
	layout := layoutFlatPlain
	if len(n.tail) > 0 {
		layout = layoutFlatIn
	}
	xsize := xattrSize(n.xattrs)
	le.PutUint16(b, uint16(formatExtended|layout<<1))
	if xsize > 0 {
		le.PutUint16(b[2:], uint16((xsize-xattrHeaderSize)/4+1))
	}
	le.PutUint16(b[4:], uint16(n.mode))
	le.PutUint64(b[8:], uint64(n.size))
	switch n.mode & unix.S_IFMT {
	case unix.S_IFCHR, unix.S_IFBLK:
		le.PutUint32(b[16:], n.rdev)
	case unix.S_IFREG, unix.S_IFDIR, unix.S_IFLNK:
		if n.size > int64(len(n.tail)) {
			le.PutUint32(b[16:], uint32(n.blkaddr))
		}
	}
	le.PutUint32(b[20:], n.ino)
	le.PutUint32(b[24:], n.uid)
	le.PutUint32(b[28:], n.gid)
	le.PutUint64(b[32:], uint64(n.mtime))
	le.PutUint32(b[40:], n.nsec)
	nlink := n.nlink
	if n.isDir() {
		nlink = 2
		for _, c := range n.children {
			if c.isDir() {
				nlink++
			}
		}
	}
	le.PutUint32(b[44:], nlink)
	off := inodeExtSize
	if xsize > 0 {
		off += xattrHeaderSize // name filter, shared count: none
		for _, name := range slices.Sorted(func(yield func(string) bool) {
			for k := range n.xattrs {
				if !yield(k) {
					return
				}
			}
		}) {
			idx, suffix, _ := xattrIndex(name)
			v := n.xattrs[name]
			b[off] = uint8(len(suffix))
			b[off+1] = idx
			le.PutUint16(b[off+2:], uint16(len(v)))
			copy(b[off+xattrEntrySize:], suffix)
			copy(b[off+xattrEntrySize+len(suffix):], v)
			off += int(alignUp(int64(xattrEntrySize+len(suffix)+len(v)), 4))
		}
	}
	copy(b[off:], n.tail)
}
