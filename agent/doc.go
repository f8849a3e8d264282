// Package agent is the pod VM agent's module: the program that runs inside
// a pod VM's guest as its PID 1, runs the pod's containers and reports them
// to the host. It depends on the standard library, the OCI runtime-spec
// types, golang.org/x/sys and vishvananda/netlink only (pure Go), so that it
// builds as one static binary
// (CGO_ENABLED=0) and never pulls the control plane's dependencies into a
// guest.
//
// # Packages
//
//	guestchannel   the contract with the host agent: pod spec, boot config, framed messages (stdlib only)
//	bootconfig     where the boot config and the spec come from (Source: a file the first stage or a
//	               simulated hypervisor writes)
//	source         guestinfo: the VMware backdoor, else a configuration disk; either read again later
//	vmboot         a booted VM's first stage (podvm-init): modules, devices, the BootConfig from guestinfo
//	nics           the spec's NICs: card found by MAC, address and prefix, default route via the gateway;
//	               PCI cards bound to their drivers again after a fork (their addresses changed)
//	disks          loop devices (LOOP_CONFIGURE, autoclear), mkfs.ext4 of a blank disk 0, erofs and ext4 mounts
//	diskcrypt      fscrypt (v2 policy) on disk 0 for a pod with an encrypted ephemeral disk, once its key came
//	bundle         one container instance's OCI bundle (runtime-spec types, Kubernetes command rules)
//	runtime        the runc/crun driver (run --detach + pid file, exec, delete)
//	supervisor     the pod: init containers, restarts with back-off, probes, OOM, stop; the reported Board
//	logs           log files on disk 0 with rotation; tail, previous (also the last boot's), follow across restarts
//	channel        dial the host (retrying forever), hello + full status per connection, partial status per
//	               change, serve logs/exec/stop/cancel
//	cmd/podvm-agent  the binary: init duties, wiring, SIGTERM = power off
//
// # Boot
//
// As PID 1 the agent makes every mount private, mounts a /proc for its pid
// namespace (and /sys, /dev, the cgroup filesystem where a real VM's kernel
// left them out), reaps every orphan of the guest, brings lo up and sets the
// hostname to the pod's. It reads BootConfig (--boot-config FILE), dials the
// channel at once (the host sees Pending while disks mount), mounts disk 0
// (formatting it ext4 if blank) and every image disk read-only, finds the
// OCI runtime, then configures the spec's NICs (a network that cannot be
// configured keeps the pod Pending, reason ContainerCreating, message
// naming the NIC) and starts the supervisor. SIGTERM — the hypervisor's
// power-off — stops every container within the pod's grace period,
// unmounts everything and exits.
//
// # Forks
//
// An instant clone's child resumes its parent's guest. A simulated
// hypervisor boots that guest ahead as a standby (BootConfig.Takeover) and
// hands it the child's configuration on a descriptor. On a booted VM the
// template's agent (PodSpec.Template) reads its configuration source again
// (BootConfig.Watch) every 100 ms and before every hello; a spec of another
// pod there is the child's: the template's channel ends, its containers are
// killed and what they wrote on disk 0 removed, the PCI cards are bound to
// their drivers again (the child's have addresses of their own) and the
// child's pod runs on the disks already mounted, greeting the host as the
// child (docs/architecture.md). While the source cannot be read, or holds
// a spec the agent cannot run, the template's agent greets no one: the VM
// may be a child's. A child forked ahead of its network (NetworkPending)
// binds its cards again once the spec with the network comes, since the
// attach gave them the pod's MACs, by which the spec's NICs are found. A
// template's spec has neither NICs nor an encrypted disk (Validate).
//
// # A container's root
//
// lowerdir = the mountpoints of the container's Chain disks in order (top
// layer first), upperdir and workdir = <disk 0>/containers/<name>/{upper,work}
// (emptied for every new instance, as a restarted Kubernetes container
// starts from its image); the overlay is mounted at
// <stateDir>/rootfs/<name> and becomes the bundle's root. A container's
// writes thus land on disk 0 only; the image disks are mounted read-only
// and never change. emptyDir volumes are <disk 0>/volumes/<name> (a tmpfs
// for medium Memory), bind-mounted into the containers that use them.
package agent
