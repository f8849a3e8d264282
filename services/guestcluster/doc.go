// Package guestcluster is the guest cluster controller: it turns a
// GuestCluster (podvisor.io/v1alpha1) into a running tenant Kubernetes
// cluster whose pods run as pod VMs of the supervisor, and deletes it with
// everything it had.
//
// For guestcluster.requested it
//
//  1. records the guest cluster (bucket guestclusters, Phase Provisioning);
//  2. checks its version's requires document against the offers of
//     podvisor's services and of the vCenter (shared/compat), posts the
//     result as a vCenter event on the compute cluster and publishes
//     guestcluster.compatibility; an incompatible one is refused before
//     anything is built (Phase Failed, reason Incompatible, condition
//     Compatible=False naming each unmet requirement);
//  3. mints the guest cluster's NATS identity (bus.GuestClusterIdentity):
//     it may ask only pv.query.guestcluster.<namespace>.<name>.> and the
//     control subjects of the log and exec streams it receives;
//  4. declares its worker VMs (workers.go: spec.workers.replicas native
//     VMs <cluster>-worker-<i>, deleting those past the count) and starts
//     its control plane (ControlPlanes): kube-apiserver with etcd, the
//     podvisor node (virtual-kubelet), which registers node `podvisor` in
//     the guest cluster and talks to this controller with that identity,
//     and one worker node per worker VM, Ready while the VM runs (node.list).
//     With Deps.GuestPorts (simulated guests) the control plane runs in
//     native VMs of its own (VMControlPlanes, vmcontrolplanes.go):
//     spec.controlPlane.replicas of them (1, 3 or 5, fixed at creation),
//     each an etcd member and an API server, behind one balanced
//     endpoint, the podvisor node in the member holding its Lease;
//     otherwise as a process of this machine (Processes, one only). In VMs, each worker VM
//     runs its own node (WorkerUserData: certificates signed here for
//     that node, never the CA key), and the controller opens the paths
//     between the worker VMs and the control-plane VM (connectWorkers);
//  5. records the endpoint and the admin kubeconfig (Phase Ready) and
//     publishes guestcluster.ready.
//
// The controller answers the node's queries (gateway.go): pod.create asks
// for the guest pod as pod.requested in a namespace the guest cluster may
// use (its own, or one of spec.namespaces), named
// <cluster>-<guest namespace>-<guest name> and labelled with the guest
// cluster and the guest pod; pod.delete asks for its deletion; pod.list
// returns the guest cluster's pods in the Kubernetes shape (status flows
// back this way); pod.logs and pod.exec are checked and handed to the host
// agent of the pod's VM, which streams its answer straight to the node.
//
// Requests of one guest cluster are ordered by the GUESTCLUSTERS stream:
// the record keeps, beside the fields clients read, the generation of the
// request whose spec it holds (its stream sequence and store time), taken
// in the same compare-and-set as the spec. A request older than that (a
// delivery retried after a newer request was stored, or one a replica
// took late) is acked and does nothing. Every declaration, the control
// plane's included, is made from the record as stored, never from the
// message: a handler stops as soon as it finds a newer request stored,
// and a pass that declared reads the record again and declares from it
// when it moved meanwhile (another replica may have declared the newer
// spec first), so that the last declaration of a worker is the newest
// spec's. Such a pass, like a request's, declares every worker its spec
// wants, whatever the VM records say (they lag behind the bus), and
// follows only into a spec its own handler admitted (found compatible,
// of a version this podvisor runs, not Failed).
//
// A running guest cluster keeps spec.workers.replicas worker VMs: one that
// went (vm.deleted: `podvisor delete vm`, say; or its record found missing
// by the resync) is declared again under its name, and the record counts
// it not Ready until its new VM runs. One that goes while the guest
// cluster is being deleted stays gone. One whose declaration the native
// VM controller refuses (vm.rejected: its class or image does not exist,
// a field is invalid) is recorded Rejected: its node says so with the
// refusal's reason, field and message, condition WorkersAccepted is False
// naming it, and the resync and vm.deleted do not declare it again (to be
// refused again at every resync) until a new request of the guest cluster
// (a new generation: a new try, as a person applying again expects) or
// until the VirtualMachineClass or VirtualMachineImage it lacked has a
// record (read at each resync: those records are what the native VM
// controller admits against). A worker the scheduler cannot place is not
// refused: its VM exists, Pending, and its node names the VM's
// Scheduled=False condition.
//
// For guestcluster.check.requested (`podvisor check guestcluster NAME`) it
// runs the same check of the recorded version and answers with the
// request's id.
//
// For guestcluster.delete.requested it marks the record Deleting, stops the
// control plane (no new pods), asks for the deletion of every pod labelled
// with the guest cluster and of its worker VMs, waits until their records
// are gone, forgets the identity, removes the record and publishes
// guestcluster.deleted. A delete request is ordered with the others: the
// mark takes its generation, so a request stored before it does nothing
// from then on, and a delete stored before the request the record holds
// does nothing itself. Removing the record leaves its tombstone
// (tombstone.go): the delete marker carries the delete request's
// generation, so a request stored before the delete and handled after it
// (a retried delivery, a late replica) finds the tombstone, not an empty
// key, and makes nothing; a request stored after it makes the guest
// cluster again, its record replacing the marker. The resync takes on the
// deletion of every record left Deleting (its handler's process may have
// gone, and the request comes again only after AckWait): the same steps,
// none that waits, with the request's ids, and the end once the pods and
// worker VMs are gone.
//
// ControlPlanes is where the guest cluster's control-plane VM runs. Processes
// runs the podvisor-guest program (module guestcluster, which carries
// k8s.io/kubernetes and virtual-kubelet so that no service builds them) as a
// process of the supervisor's machine with its own directory.
package guestcluster
