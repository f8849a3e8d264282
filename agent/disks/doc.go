// Package disks makes a pod VM's virtual disks usable by the agent: it
// attaches regular files (a simulated guest's disks are the flat extent files
// on the simulated datastore) through loop devices, formats the ephemeral
// disk when it holds no filesystem yet, and mounts it read/write and every
// image disk read-only.
//
// Loop devices are configured in one LOOP_CONFIGURE call with autoclear, so
// the kernel detaches them when their filesystem is unmounted, including
// when the guest's mount namespace dies with the agent: a killed guest
// leaves no loop device behind. An erofs image in a regular file is mounted
// file-backed where the kernel can (no loop device at all) and through a
// read-only loop device otherwise.
package disks
