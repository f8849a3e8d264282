// Package node is the guest cluster's `podvisor` node: a virtual-kubelet
// (github.com/virtual-kubelet/virtual-kubelet) whose provider runs the pods
// bound to it as pod VMs of the supervisor.
//
// The provider talks to the supervisor only through its guest cluster's
// queries (Supervisor, events.SubjectGuestClusterQuery), with the guest
// cluster's own NATS identity: CreatePod asks pod.create, DeletePod asks
// pod.delete, a loop asks pod.list every PollInterval and pushes each
// pod's status into the guest cluster (virtual-kubelet's NotifyPods), and
// the kubelet API's logs and exec are pod.logs and pod.exec streams that the
// supervisor hands to the host agent of the pod's VM.
//
// Binder binds the guest cluster's unscheduled pods to a node (the guest
// control plane has no kube-scheduler): to `podvisor` unless the pod's
// nodeSelector or required node affinity asks for other nodes (the worker
// nodes, by their labels); a pod no Ready node matches stays Pending with
// PodScheduled=False, reason Unschedulable, saying why.
package node
