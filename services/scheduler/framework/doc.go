// Package framework is the scheduler's plugin framework, modelled on the
// kube-scheduler framework: placement is a pipeline of small plugins, each
// answering one question at one extension point.
//
//   - Filter plugins say whether a host can take a pod at all. They return a
//     *Status: nil (or Success) when the host fits, otherwise a code and a
//     CamelCase reason such as InsufficientMemory with a short phrase a person
//     reads ("insufficient memory"). When no host fits, the reasons are counted
//     per host into the pod.unschedulable message ("0/16 hosts: 10 insufficient
//     memory, 6 network backend not on host").
//   - PreScore plugins compute, once per pod, what scoring needs (for example
//     the image locality of the pod's images, one Redis round trip).
//   - Score plugins rank the feasible hosts from 0 to MaxHostScore; the
//     framework sums the scores times the plugin's weight in the profile.
//   - Reserve plugins run on the chosen host before the placement is made
//     durable; a failing Reserve undoes the ones that ran (Unreserve).
//
// A Registry maps plugin names to factories, and a Profile (from the service
// configuration) lists the plugins, their weights and the packing strategy:
// "binpack" scores with MostAllocated (fill hosts before opening new ones),
// "spread" with LeastAllocated (keep headroom everywhere).
//
// Hosts are evaluated from a Snapshot: the inventory (capacity, state,
// datastores, labels), the networks realized on each host and the
// allocations of the placement ledger, plus the pods the scheduler has
// assumed but not yet committed. Like kube-scheduler, a large inventory is not
// filtered exhaustively: the framework stops after it has found enough
// feasible hosts (Profile.PercentageOfHostsToScore, adaptive by default) and
// starts the next pod where the previous search stopped, so every host gets
// its turn. A pod that fits nowhere is always checked against every host, so
// its reason counts are complete.
package framework
