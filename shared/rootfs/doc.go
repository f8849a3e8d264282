// Package rootfs writes an image's flattened filesystem into a directory:
// the native VM controller's boot disks and the benchmarks' baselines
// (containers started directly with the OCI runtime, a plain image pull)
// unpack images this way.
//
// Every write goes through an os.Root of the directory, so an image cannot
// write outside it. A name that climbs ("../../etc/passwd") is taken from
// the root and lands inside (etc/passwd); a path that crosses a symbolic
// link pointing out ("etc" -> "/etc", then "etc/passwd") is refused with an
// error naming the entry, and nothing is written past it.
package rootfs
