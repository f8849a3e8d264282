// Package layerfs turns one OCI layer (its uncompressed tar stream) into a
// read-only filesystem image that a stock Linux kernel mounts as it is: an
// erofs image, which the image cache stores as the flat extent of the
// layer's virtual disk.
//
// The image holds the layer's diff, not a flattened tree, in the form
// overlayfs reads from a lower layer:
//
//   - a whiteout ".wh.x" becomes a character device 0/0 named x;
//   - an opaque marker ".wh..wh..opq" becomes the xattr
//     trusted.overlay.opaque="y" on its directory;
//   - hard links, symlinks, device nodes and fifos, owners, modes (setuid,
//     setgid, sticky), xattrs (PAX SCHILY.xattr.*) and mtimes are kept.
//
// # Two writers
//
// Read (the image cache's path for uncompressed disks) writes the image
// straight from the tar stream: each file's data goes to the image file,
// block-aligned, as it streams; the tree (names, inodes, xattrs, file tails
// under a block) stays in memory. The caller checks the layer's digests
// meanwhile (package oci streams and hashes) and only then calls
// Layer.Erofs, which lays out the metadata after the data: extended inodes
// (32-bit owners, nanosecond mtimes), inline xattrs, tails inline beside
// their inodes, directories of sorted dirents, then the superblock. No
// privilege and no tool is needed, and nothing is written twice.
//
// Stage and Staged.Erofs (compressed disks, and the reference the tests
// compare Read with) apply the tar to a private directory and run
// mkfs.erofs on it; erofs-utils 1.5 (Debian's) has no tar import.
//
// Both refuse the same entries for the same reasons, and the kernel mounts
// the same tree from both images (the tests compare them entry for entry).
// Read also refuses what erofs cannot hold: xattrs outside user.,
// trusted., security. and the POSIX ACLs, more xattrs than fit one block
// beside their inode, names over 255 bytes.
//
// # Hostile layers
//
// Read only ever writes its image file; its tree is in memory, where a
// path through a symlink or a file is refused like a name climbing above
// the root. Stage creates every file relative to an open directory
// descriptor (openat, mknodat, symlinkat, linkat, fchownat with
// AT_SYMLINK_NOFOLLOW), each parent opened with O_NOFOLLOW, and names are
// cleaned and refused when they climb above the root, so no entry can
// write outside the staging directory, whatever symlinks earlier entries
// made. Symlink targets are stored verbatim and never followed (inside the
// guest they resolve within the container's root). Refused, with an error
// naming the entry: names or hard-link targets escaping the root, absolute
// hard-link targets, hard links to entries the layer does not have, a path
// through a symlink or a file, duplicate entries, xattrs in
// trusted.overlay.* (overlay metadata a layer must not forge), sparse and
// unknown entry types, more than MaxEntries entries and more than MaxBytes
// of file contents. The caller caps the compressed and decompressed stream.
//
// # Privileges
//
// Read needs none. Stage makes device nodes, owners other than the caller
// and trusted.* xattrs, which need root (CAP_MKNOD, CAP_CHOWN,
// CAP_SYS_ADMIN). Check reports whether this process can write image disks
// of a compression, so that a service can say so at start instead of
// failing at the first layer.
//
// # Reproducible images
//
// The image's UUID derives from the layer's diffID, per-file mtimes are
// kept and the superblock's build time is zero, so the same layer gives the
// same bytes (Read: data in tar order, inodes depth first in name order;
// Staged.Erofs: mkfs.erofs --preserve-mtime, the build time zeroed and the
// checksum recomputed after).
package layerfs
