// Package supervisor runs a pod's containers inside the guest as a kubelet
// would: init containers one at a time in order, then every container; each
// container instance on a fresh overlay root (lower = its image's chain
// disks, top first; upper and work on the ephemeral disk); restarts by the
// pod's restartPolicy on the kubelet's schedule: the first restart at once
// (the ended instance's terminated state stays the state until the next
// instance is there, then is its last state), every later one after an
// exponential back-off, Config.Backoff doubling up to MaxBackoff
// (CrashLoopBackOff while waiting), and an instance that ran longer than
// twice MaxBackoff forgives the crashes before it, so that its restart is
// a first one again; liveness, readiness and startup probes (liveness and
// startup end once the pod's stop began, as the kubelet's do); OOM kills
// recognised from the container's memory cgroup; and a stop that sends
// SIGTERM, waits the grace period and then SIGKILLs. An instance the
// agent ended (a probe's kill, a SIGKILL after the grace period) says why
// in its terminated state's message, as the kubelet's event does. A
// container the spec says completed (terminated for good in an earlier
// boot of the pod, in another pod VM) is never started: it is reported
// terminated with that state from the first report on and counts as
// terminated in the pod's phase; it has no log in this boot.
//
// The Board holds what is reported: container states in
// guestchannel.ContainerStatus shape and the pod's phase. The channel
// package reads it; nothing else writes it.
package supervisor
