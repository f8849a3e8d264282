// Package sim runs a simulated vCenter for podvisor: govmomi's vcsim shaped
// like a small production site, so services, tests and benchmarks exercise the
// same vSphere API calls they would make against a real vCenter.
//
// # Starting a datacenter
//
//	d, err := sim.Start(ctx, sim.Config{})   // 2 clusters x 8 hosts
//	if err != nil { ... }
//	defer d.Close()
//	fmt.Println(d.URL())                     // http://podvisor:podvisor@127.0.0.1:PORT/sdk
//
// Tests use shared/simtest, which adds cleanup. The URL carries the
// credentials, the form GOVC_URL takes, so govc and shared/vsphere connect to
// it directly (GOVC_INSECURE=1). Login is enforced: a wrong user or password
// gets "Login failure" as on vCenter.
//
// # What is inside
//
// One datacenter, DC0, with clusters cluster-1..N, each with hosts
// esx-<cluster>-<nn>. vcsim's hosts all report 2 cores and 4 GiB; here every
// host gets the hardware of a real two-socket server (32, 48 or 64 cores,
// 256 to 768 GiB) drawn from Config.Seed, so a run is reproducible and the
// hosts are unequal, which is what a scheduler needs to be tested against.
// Hardware is written through vcsim's update path, so summary.hardware,
// hardware.cpuInfo, hardware.memorySize, the cluster summaries and the root
// resource pools all report it; Hosts lists the same numbers for assertions.
//
// Storage: shared-ds (NFS) is mounted on every host, cluster-N-ds only on
// cluster-N's hosts, each backed by a real directory, so uploads and virtual
// disks store real bytes. vcsim crashes on a path naming a datastore that does
// not exist: build such paths with DatastorePath, or check names with
// Datastore.
//
// A powered-on VM's disks are locked, as its host locks them on vSphere:
// every file of each disk's backing chain, parents included. Deleting one
// (FileManager.DeleteDatastoreFile_Task, VirtualDiskManager.DeleteVirtualDisk_Task),
// or a folder holding one, gives a task that fails with FileLocked (a
// folder: CannotDeleteFile caused by FileLocked), where vcsim alone would
// remove the files. A powered-off VM's disks can be deleted (disklock.go).
//
// Networking: the standard "VM Network" on every host and the distributed
// switch pv-dvs with every host as a member. Config.PortGroups adds port groups
// to pv-dvs at start; that is where the site's pre-existing networks are
// declared. SetManagementVLAN models the hosts' management network: a host
// that carries a port group on that VLAN stops responding until the port
// group moves off it, which is what network-config's rollback is tested
// against.
//
// With guests on, networks carry packets (segments.go, package segment):
// every distributed port group is a Linux bridge, created and removed with
// the port group; a host carries it while it is a member of the port
// group's switch; a powered-on pod VM's cards are veth pairs into its
// guest, plugged into the bridge only while the VM's host carries the
// port group. Pods on one port group reach each other by IP, pods on
// different ones cannot; Segment tells a test which bridge and hosts a
// port group has.
//
// # Host state
//
// FailHost, RecoverHost and SetMaintenance change host state the way a
// vCenter reports it, and property-collector watchers (WaitForUpdatesEx)
// observe the change: vcsim's own Disconnect/EnterMaintenanceMode do not
// notify watchers, so those API tasks are also republished through the update
// path after they succeed. EnterMaintenanceMode_Task is refused while
// powered-on VMs remain on the host, since no DRS evacuates them here.
//
// # Faults and latency
//
// AddFault injects vSphere faults into matching calls (see
// simulator.FaultInjectionRule); SetTaskDelay slows a kind of task, so tests
// can observe work in flight. Task delays are process-wide in vcsim; Close
// removes the ones a datacenter set.
//
// Watchers must set MaxWaitSeconds: vcsim's WaitForUpdatesEx ignores the
// request context, and a wait without a limit would keep Close from stopping
// the server (Close gives up after a few seconds rather than hang).
package sim
