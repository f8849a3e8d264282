// Package nativevm is the provisioner's native VM controller, beside the
// pod VM controller (the seed's "master server with a pod VM controller and
// a native VM controller"). It owns the records of VirtualMachines,
// VirtualMachineClasses and VirtualMachineImages (KV vms, vmclasses,
// vmimages) and the vCenter VMs nv-<uid>.
//
// # Flow
//
// A VM is declarative and mutable. vm.declared is admitted against the
// class and image records (a missing one is vm.rejected naming the field);
// a declaration that changes the spec (or a class that changes size) is a
// new generation, announced once as vm.accepted with the compiled VMSize.
// The scheduler places each generation in the same ledger as pods
// (vm.scheduled, vm.unschedulable) and network-config attaches its NICs
// from the same IPAM (vm.network.attached). Once the latest generation is
// placed and attached, converge makes vCenter match:
//
//   - a missing VM is created on its host: CPUs, memory and reservations
//     from the class, the boot disk a copy of the image's disk, extra
//     disks, one vmxnet3 NIC per network with the MAC IPAM chose, and the
//     cloud-init data in ExtraConfig as the VMware datasource reads it
//     (guestinfo.userdata, guestinfo.metadata, base64);
//   - an existing VM gets its changes: a resize powers it off first
//     (vSphere changes CPUs and memory of a powered-off VM), NICs are
//     added or removed while it runs (hot-plug; the cloud-init network
//     data is rewritten, and its guest reads it at its next boot: below),
//     changed user data is rewritten, and its extra
//     disks follow spec.disks while it runs (disks.go): a disk added is
//     created and hot-added (a file of its name already in the VM's
//     directory is attached, data and all), a disk grown is extended in
//     place, a disk removed is detached and its file kept until the VM is
//     deleted; a disk is never shrunk (the declaration is refused, and a
//     file found larger than declared fails the update, DiskShrinkRefused);
//   - then its power state is set as declared (PoweredOn, PoweredOff,
//     Suspended).
//
// The record's status (phase, powerState, host, ips, network,
// conditions) says only what was done; every change is also published as
// vm.status. HardwareSynced is read back, not assumed: True only when the
// devices vCenter reports (CPUs, memory, NICs, each extra disk at its
// size) are the declared ones, False with the difference
// (HardwareDiffers, retried) otherwise.
//
// # What the guest has of its NICs
//
// status.nics are network-config's allocations; status.ips are only the
// addresses the guest has configured (guestnet.go). A guest with
// cloud-init configures its network from the cloud-init data once, when
// it boots: a NIC hot-added to a running VM is in the guest at once (a
// simulated guest gets a new interface eth<n>, with the card's MAC, down
// and without an address) and gets its address at the next boot. With no
// report of the guest's addresses (VMware Tools' guest.net), the status
// says what the guest was given at its last boot while it runs:
// status.network.guestBoot is that boot (vCenter's
// summary.runtime.bootTime) and the addresses its data gave each card,
// recorded before the controller rewrites the data of a running VM and
// dropped when the controller powers the VM off (a resize's power cycle
// is a new boot). A boot time vCenter does not report is unknown, not the
// same boot: a boot the controller made read the data there is, any other
// keeps the boot recorded and the condition says the time is unknown. Each
// NIC is in status.network.interfaces: attached (vCenter reports its
// card), its allocated address, ip.addresses (what the guest has
// configured) and, when that is empty, why (NotAttached, GuestNotRunning,
// RebootRequired). GuestNetworkConfigured is True when the guest has every
// NIC's address, False otherwise with the reason and the NICs; a NIC
// hot-added says RebootRequired until the VM is powered off and on (by
// declaration, or behind the controller's back once a converge reads the
// new boot), and a powered-off VM lists no address.
//
// # Images
//
// An image's OCI source is turned into a boot disk once per digest: the
// image's flattened root filesystem written as an ext4 filesystem
// (mkfs.ext4 -d) into the flat extent of a virtual disk under
// [datastore] podvisor-vmimages/, through vSphere's datastore file API.
// Each VM boots from its own copy (CopyVirtualDisk), so what its guest
// writes stays its own. Simulated guests boot that disk's /sbin/init.
// The digest the image's reference resolved to is kept in the VM's record
// (VMRecord.ImageDigest) when its boot disk is first built: a boot disk
// built again (the VM made again) is taken from that digest's image disk
// without the registry, which may have moved since (another port at the
// next `podvisor up`); the registry is asked, for that digest, only when
// no such disk is ready. A declaration that changes the reference clears
// the digest, and the new reference is resolved afresh. The record copies
// the image's spec when a declaration is accepted; a VM not made yet
// follows its VirtualMachineImage's record when it is made (the image
// re-applied with the registry's new address is what it is made from),
// while a VM made once keeps the image it was made from (followImage). A
// registry's error that is a web page (another server at its old address)
// is cut to its status line in the VM's condition.
// A content library source names an OVF template; the controller resolves
// the item when the image is declared (the image is not Ready while it is
// missing) and vCenter deploys it for each VM (the library's deploy API,
// vcenter.Manager.DeployLibraryItem) on the VM's host, pool, datastore and
// folder: the VM has the template's hardware and disks, then the class's
// size, the cloud-init data, the NICs and the extra disks. An image with
// both sources is deployed from the template with the OCI root's boot
// disk in place of the template's first disk, so a simulated guest boots
// it.
//
// # Drift repair
//
// The provisioner's periodic drift repair calls Resync: a VM whose record
// says it was made (status.vm) but that vCenter does not have (deleted by
// hand, a vCenter rebuilt from nothing) is made again from its spec on its
// host, keeping the disks it left on the datastore (its boot disk and
// extra disks, with what its guest wrote: a guest cluster's etcd data),
// and one not in its declared power state is set to it. A VM never made
// whose create failed on every delivery of its handler is Failed (Created
// False CreateRetriesExhausted, with the error), not left Creating with
// nothing retrying it, and each pass creates it again until it is made:
// what failed (a registry down or moved) may pass. Each repair
// first moves the record on by compare-and-set at the revision read, so
// one of several replicas does it and a handler that moved the record
// meanwhile wins (resync.go). A record left Deleting (the delete handler's
// process died midway) has its delete finished by the same steps the
// handler takes (finishDelete): each is safe to run twice or at once, the
// record goes only while it is still that VM's, and vm.deleted has one id
// per VM, so the stream keeps one copy.
//
// # Declarations and deletes
//
// The VMS stream orders what was asked: a delete request stored after a
// declaration outranks it, so the declaration delivered again once the
// delete is done (a redelivery, a retry) makes nothing, while one stored
// after the delete makes a new VM (bus.StoredAfter). The delete request is the
// tombstone, kept as long as the stream keeps events. The other way round,
// a delete applies only to a record declared before it: the record keeps
// where its last declaration was stored (VMRecord.DeclaredSeq), and a
// delete stored earlier (delivered again once its VM was gone and the name
// declared anew) leaves the VM alone. A record written before it kept that
// says nothing, and a delete applies to it as it always did.
//
// # Drain and host loss
//
// A VM is moved under the same migration limits as pods: a drain or
// `podvisor migrate vm` asks for vm.migrate.requested, the scheduler
// reserves a target, the migration service admits the move when its
// source host, source cluster and target cluster have room
// (vm.migration.admitted), and this controller relocates it (vMotion,
// onAdmitted; a relocation vCenter refuses fails at once, freeing the
// target). A drain's VM that cannot move, or
// one on a lost host, is evicted (vm.evicted): it is placed again, on a
// host that mounts its disks' datastore, and made again there from the
// disks it left, in its declared power state, as vSphere HA restarts a VM:
// the VM it left is removed from vCenter's inventory (powered off first
// where its host lets it), its files kept (VMRecord.DisksOn).
package nativevm
