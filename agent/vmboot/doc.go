// Package vmboot is the first stage of a pod VM's boot: what the kernel's
// init must do in a real VM before the agent can run as it does in a
// simulated guest. It moves the root from the initramfs's rootfs (which the
// OCI runtime cannot pivot away from) onto a tmpfs, mounts /proc, /sys, /dev
// and the cgroup filesystem, loads the kernel modules the image lists
// (paravirtual SCSI and NIC, vsock, overlay, erofs, ext4), finds the
// guestinfo (VMware backdoor, else a configuration disk), maps the spec's
// disk units ("scsi0:1") to the block devices the kernel made of them, and
// writes the agent's guestchannel.BootConfig. cmd/podvm-init then executes
// the agent in its place (still PID 1).
package vmboot
