package layerfs

// The erofs on-disk format of an uncompressed image, as far as Build writes
// it (linux/fs/erofs/erofs_fs.h). Every inode is an extended one (64
// bytes: 32-bit owners, 64-bit mtime with nanoseconds); data is either
// plain (whole blocks from raw_blkaddr) or plain with its last partial
// block kept inline right after the inode and its xattrs.

const (
	blockBits = 12
	blockSize = 1 << blockBits

	// Superblock fields (offsets from superOffset) beyond those of erofs.go.
	offRootNid   = 14
	offInos      = 16
	offBlocks    = 36
	offMetaBlk   = 40
	offUUID      = 48
	inodeExtSize = 64
	direntSize   = 12
	nidShift     = 5 // nid = byte offset in the metadata area / 32

	// i_format: bit 0 = extended inode, bits 1-3 = data layout.
	formatExtended  = 1
	layoutFlatPlain = 0
	layoutFlatIn    = 2

	// xattrs: an ibody header, then entries aligned to 4 bytes.
	xattrHeaderSize = 12
	xattrEntrySize  = 4
	xattrValueMax   = 1<<16 - 1
	// maxNameLen is erofs's (and Linux's) limit on a name.
	maxNameLen = 255
)

// Dirent file types (EROFS_FT_*).
const (
	ftReg     = 1
	ftDir     = 2
	ftChr     = 3
	ftBlk     = 4
	ftFifo    = 5
	ftSymlink = 7
)

// xattrPrefixes are the name indexes erofs stores xattr names by; a name
// outside them cannot be stored.
var xattrPrefixes = []struct {
	prefix string
	index  uint8
	whole  bool // the whole name is the prefix (POSIX ACLs)
}{
	{"user.", 1, false},
	{"system.posix_acl_access", 2, true},
	{"system.posix_acl_default", 3, true},
	{"trusted.", 4, false},
	{"security.", 6, false},
}

// alignUp rounds n up to a multiple of a (a power of two).
func alignUp(n, a int64) int64 { return (n + a - 1) &^ (a - 1) }
