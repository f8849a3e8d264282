package qemu

import "golang.org/x/sys/unix"

// shmFits reports whether the tmpfs at dir has size bytes free.
func shmFits(dir string, size uint64) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Bavail*uint64(st.Bsize) >= size
}
