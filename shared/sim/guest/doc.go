// Package guest runs the guests of a simulated datacenter's pod VMs: what a
// hypervisor does with a VM's guest, done with Linux namespaces and cgroups
// so that the pod VM agent runs for real while vCenter is simulated.
//
// # A guest
//
// Powering a pod VM on (a VM whose ExtraConfig carries
// guestinfo.podvisor.spec) starts its guest:
//
//   - a directory <Dir>/<vm key> (Dir is a tmpfs the manager mounts:
//     rundir.go) holding boot.json (the agent's guestchannel.BootConfig),
//     console.log (the agent's output; a link to <Dir>.consoles/<vm
//     key>.log, on disk), state/
//     (BootConfig.StateDir: on that tmpfs, as a real guest's /run is;
//     the agent mounts one of its own there when it is not) and
//     channel.sock;
//   - devices: each virtual disk's unit ("scsi0:0") maps to the disk's flat
//     extent file on the simulated datastore (a real directory); a
//     read/write disk's extent is extended, sparse, to the disk's capacity
//     (a hypervisor presents a zero-filled device of the configured size),
//     independent-nonpersistent image disks are left untouched;
//   - the VM's cgroup <base>/<vm key>, the same path in every cgroup v1
//     hierarchy, below this process's own cgroup: cpu.cfs_quota_us is the
//     VM's vCPUs, memory.limit_in_bytes its memory, so a container asking
//     more than the VM cannot get it. It is BootConfig.CgroupParent;
//   - the agent, started as PID 1 of new mount, pid, uts, ipc and net
//     namespaces. A two-line /bin/sh launcher runs first in the new
//     namespaces (Go cannot run code between clone and exec): it writes
//     itself into the VM's cgroups, waits for the hypervisor's word on
//     fd 3 and execs the agent, so the agent's first instruction already
//     counts against the VM. The agent, as PID 1, makes every mount of its
//     namespace private before it mounts anything, so none of its mounts
//     can reach the host;
//   - the VM's network cards (Config.Fabric, package segment): while the
//     launcher waits, each card becomes a veth pair, the guest end eth<i>
//     with the card's MAC in the guest's network namespace, the host end
//     plugged into its port group's bridge while the VM's host carries the
//     port group (SetSegments; Move re-plugs). The agent configures the
//     addresses itself, as a guest does.
//
// # A native VM's disks and cards
//
// A native VM's guest (VM.Native) boots its boot disk's /sbin/init instead
// of the agent; its other read/write disks are block devices sdb, sdc, ...
// in its /dev, loop devices over their extents (disks.go). A reconfigure
// of the running VM (Reconfigure) changes them as vSphere's hot-plug
// does: a disk added is a new device at once, a disk removed is gone, a
// disk grown has its new size. A disk's loop device is detached when the
// disk is removed or the guest stops. Its network cards follow the same
// way (nics.go): a card added is a new interface at once, under the
// lowest name eth<n> free in the guest's network namespace as it is (its
// init may have renamed cards), with its MAC, plugged into its segment, down
// and without an address (the guest's init configures its network from
// its cloud-init data at boot, as cloud-init does, not when a card
// arrives); a card removed is gone; the others keep their names.
//
// # The channel (vsock, simulated)
//
// The agent dials BootConfig.Channel, unix:<guest dir>/channel.sock. The
// manager listens there and forwards each connection to
// <ChannelDir>/<host>.sock (HostSocket), the host agent of the host the VM
// runs on now. No host agent listening: the connection is closed and the
// agent dials again. A relocation (Move) re-routes the channel and closes
// its connections, as a migrated VM's vsock connections end; a host
// failure cuts it.
//
// # Many guests at once
//
// Power-ons of different VMs boot their guests in parallel, a few at a
// time (parallelStarts): a burst of pods is not started one guest after
// the other. Package sim starts a boot with BeginPowerOn, so the power-on
// task ends when the VM runs, as a real host's does, and not when its
// guest has booted: a burst's power-on tasks do not hold their VMs (and
// the clients waiting on the tasks) through the boots queued behind
// them. Whatever else is done to a VM whose guest is booting (power-off,
// Close, Move, Reconfigure, Pause, Guest) waits for the boot, so a VM's
// operations keep their order. Taking over a standby (standby.go) and
// booting one stay under the manager's lock.
//
// # Power and host state
//
//   - PowerOff: SIGTERM to the agent, StopGrace, then SIGKILL (PID 1 of a
//     pid namespace takes every process of it along), then SIGKILL of
//     anything left in the VM's cgroup; it returns once the cgroup is empty
//     and removed. The guest's directory stays until Destroy.
//   - FreezeHost (host failure): the freezer cgroup stops every process of
//     the host's guests and their channels are cut; ThawHost resumes them.
//   - Close stops every guest and removes Dir and the manager's cgroups:
//     nothing a guest made outlives the simulator. Guests also get
//     SIGKILL if the simulator's process dies (Pdeathsig).
//
// While a manager runs, the machine's cgroup2 hierarchy has the mount
// option favordynmods (dynmods.go): cgroup moves, which every guest boot
// and container start make, do not wait for an RCU grace period.
//
// Guests need root, the agent binary, /bin/sh, mount, and the cpu, memory,
// pids and freezer v1 controllers; Check says which is missing. Package sim
// wires the manager to vcsim's power, reconfigure, relocate and destroy
// operations and to FailHost/RecoverHost.
package guest
