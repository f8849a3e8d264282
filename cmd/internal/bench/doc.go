// Package bench measures podvisor against the backend it drives, in one run
// on one machine, so that every ratio it prints compares numbers taken under
// the same conditions:
//
//   - pipeline: an all-in-one podvisor (NATS, the vCenter simulator, Redis,
//     the registry and all five services in this process, in a temporary
//     state dir) receives N pod.requested events, published in parallel or
//     at a fixed --rate; it reports pods/s to "VM running" and the
//     request→VM running latency of each pod (from just before its publish
//     to the time of its pod.vm.ready event: the pod VM created and powered
//     on) as p50/p95/p99. The bench's datacenter runs no guests, so no
//     container ever starts and no pod reaches Running; the figure measures
//     the control plane up to the powered-on VM and says so.
//   - raw: the same N pod VMs (same size, same ephemeral disk and image
//     disk, same NIC, same guestinfo volume) created and powered on
//     directly with govmomi on a fresh simulator of the same size, by a
//     pool of workers with a VM folder each, at a few worker counts; the
//     best is the backend's limit.
//   - sequential: one VM at a time, create then power on, over one logged-in
//     session, as a script calling a vSphere CLI in a loop would (minus the
//     CLI's own process start and login, so this baseline is generous).
//   - scheduling only: the scheduler's framework (the plugins the service
//     runs) placing N pods on a snapshot of the same hosts, no bus, no
//     vSphere.
//   - image cache: one image prepared cold (nothing on the datastore) and
//     then warm, from pod.requested to pod.images.ready, with the registry
//     bytes each moved (from pv.image.pulled).
//   - memory: the process's peak RSS (VmHWM) after the pipeline, the Go heap
//     per pod measured at N and the estimate for 10,000 pods derived from
//     it.
//
// Run returns a Result; Result.Table prints the side-by-side table with the
// ratios, Result.SVG draws the chart. `podvisor bench` is the command.
package bench
