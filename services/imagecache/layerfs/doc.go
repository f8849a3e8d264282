// Package layerfs turns one OCI layer (its uncompressed tar stream) into a
// read-only filesystem image that a stock Linux kernel mounts as it is: an
// erofs image, which the image cache stores as the flat extent of the
// layer's virtual disk.
//
// # Two steps
//
// Stage applies the layer's tar stream to an empty private directory. It
// writes the layer's diff, not a flattened tree, in the form overlayfs reads
// from a lower layer:
//
//   - a whiteout ".wh.x" becomes a character device 0/0 named x;
//   - an opaque marker ".wh..wh..opq" becomes the xattr
//     trusted.overlay.opaque="y" on its directory;
//   - hard links, symlinks, device nodes and fifos, owners, modes (setuid,
//     setgid, sticky), xattrs (PAX SCHILY.xattr.*) and mtimes are kept.
//
// The caller checks the layer's digests meanwhile (package oci streams and
// hashes) and only then calls Erofs, which runs mkfs.erofs on the staged
// tree and returns the image. The staged tree is removed either way.
//
// # Hostile layers
//
// Every file is created relative to an open directory descriptor (openat,
// mknodat, symlinkat, linkat, fchownat with AT_SYMLINK_NOFOLLOW), each
// parent is opened with O_NOFOLLOW, and names are cleaned and refused when
// they climb above the root, so no entry can write outside the staging
// directory, whatever symlinks earlier entries made. Symlink targets are
// stored verbatim and never followed (inside the guest they resolve within
// the container's root). Refused, with an error naming the entry: names or
// hard-link targets escaping the root, absolute hard-link targets, hard
// links to entries the layer does not have, a path through a symlink or a
// file, duplicate entries, xattrs in trusted.overlay.* (overlay metadata a
// layer must not forge), unknown entry types, and more than MaxEntries
// entries. Sizes are capped by the caller on the decompressed stream.
//
// # Privileges
//
// Device nodes, owners other than the caller and trusted.* xattrs need
// root (CAP_MKNOD, CAP_CHOWN, CAP_SYS_ADMIN). Check reports whether this
// process can write image disks at all, so that a service can say so at
// start instead of failing at the first layer.
//
// # Reproducible images
//
// The image's UUID derives from the layer's diffID, per-file mtimes are
// kept (--preserve-mtime) and the superblock's build time is set to zero
// (its checksum recomputed), so the same staged tree gives the same bytes.
package layerfs
