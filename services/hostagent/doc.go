// Package hostagent is the host agent: one per hypervisor host, the
// "pod VM controller in the virtualization layer, external to the VMs". It
// owns the guest channels of its host's pod VMs and is the control plane's
// only way into them.
//
// # Channels
//
// The agent listens on <ChannelDir>/<Host>.sock. The hypervisor (vsock on
// vSphere, package shared/sim/guest in the simulator) routes every pod VM
// agent's connection to the host agent of the host the VM runs on now. The
// first message must be a hello (agent/guestchannel): its pod uid is
// checked against the pod records (KV `pods`, read only): the pod must
// exist with that uid and be placed on this host, or the channel is refused
// with an error message and closed (the agent dials again later, by when a
// migration's record update has usually landed). A newer channel of the
// same pod replaces the older one. Every write to a channel is bounded by
// Config.WriteTimeout (10 s): a guest that does not take a frame in that
// time has its channel closed (it dials again), so no guest holds a
// delete, a query or the concentrator waiting to write.
//
// Where hosts run no agent of their own (vSphere), pod VMs' channels are
// network serial ports that their hosts connect to a Concentrator, one TCP
// listener for every host agent of the process: it asks each line for a
// hello (resync), checks the hello's channel token and hands the channel to
// the agent of the host the pod is placed on (concentrator.go).
//
// # Reports
//
// Every status the agent sends (a full one after hello, partial ones on
// change) is merged into the channel's view and published as
// pod.containers.reported: every container of the pod's spec in spec
// order, in corev1.ContainerStatus shape, imageID = the image digest from
// the pod record, containers the agent has not reported yet waiting
// (ContainerCreating). The event id is ReportID(pod uid, boot id, seq): the
// same report published twice (a reconnect, a restarted host agent) is
// stored once. Reports coalesce: a burst of changes publishes the newest.
// The channel's first report, when it only says every container is being
// created (the agent's status at hello, before its first start), waits up
// to Config.ReportHold (off by default: 0) for a newer one: a pod whose containers start
// within it costs one report, one event and one record write, not two
// (measured in a burst of 100: 8.65 → 8.00 writes per pod in the PODS
// stream, 7.65 → 7.01 in the pods bucket). A report saying anything more
// never waits, and a guest whose containers do not start in time is still
// heard from within the hold.
//
// # The host's network
//
// With Deps.Network (what the host really carries of the distributed port
// groups: its switch proxy on vSphere, its Linux segments in the simulated
// datacenter, sim.HostSegments), the agent applies the final desired state
// network-config pushes to its host, network.host.desired, on the host's
// own subject pv.network.host.desired.<host> (its own durable on NETWORKS,
// hostagent-<host>, filtered on that subject, one state at a time): it
// carries the listed port groups the host lacks, drops the network port
// groups (pv-<network>) no longer listed, leaves everything else alone,
// and reports the difference with network.host.applied (added, removed,
// unchanged, failed). At start it applies the newest state on its subject,
// and it applies the last state again every NetworkResync (NetworkRetry
// after a partial failure; from 1 s, doubling, when the only failures are
// port groups vCenter does not have yet, as while network-config creates
// them again), reporting only what that changed: drift on the host is
// repaired there (netstate.go). States are ordered by their sequence in
// the stream: a delivery older than the state the agent has (one whose
// apply failed, delivered again after the next state was applied; one
// older than the state read at start) is acknowledged without being
// applied.
//
// # Logs and exec
//
// Core NATS request/reply on per-host subjects,
// events.SubjectPodLogs(host) = pv.query.pod.logs.<host> and
// events.SubjectPodExec(host) = pv.query.pod.exec.<host>, with
// events.PodLogsRequest and events.PodExecRequest. Only the host agent
// holding a pod's channel can answer, so clients read the pod record's host
// and ask that agent; a request for a pod placed elsewhere, or whose guest
// is not connected, is answered with an error. Answers are streamed to the
// reply subject as events.PodStreamMessage (numbered; the first names a
// control subject for stdin, cancel and keep-alives; the last has EOF, an
// exec's exit code, or an error).
//
// A logs request FromEnd (events.PodLogsRequest.FromEnd, `logs --tail 0`)
// goes on as such to an agent announcing guestchannel.CapLogsFromEnd,
// which starts at the log's end. An older agent would read it as the
// whole log, so the host agent asks it for the last line instead, then
// (with Follow) follows from that line and leaves it out of the stream
// (serveLogs in query.go): what clients did before, kept in one place so
// that every client gets from the end, whatever its pod's agent.
//
// A logs request's Timestamps, SinceTime and LimitBytes (`logs
// --timestamps`, `--since`, `--since-time`, `--limit-bytes`) go on to an
// agent announcing guestchannel.CapLogsTimestamps, which keeps the time of
// every line. An older agent would ignore them and send the whole log
// without times, so the host agent refuses such a request for its pods,
// naming the option, instead of relaying it.
//
// An exec's stdin has flow control when the client asks for a window
// (events.PodExecRequest.StdinWindow): the first answer grants it (at most
// guestchannel.MaxExecStdinWindow), and the client keeps no more than that
// sent and not yet acknowledged. To an agent announcing
// guestchannel.CapExecStdinAck the window goes on with the exec and its
// exec.stdin.ack counts are relayed as answers with StdinAcked; for an
// older agent the host agent acknowledges each piece of input itself once
// written to the channel, and the agent's own bound on unread input
// applies as before (stdinRelay in query.go). A client numbers its stdin
// pieces (events.PodStreamControl.StdinSeq): core NATS drops what a
// stream's control subscription cannot hold, so a piece that does not
// follow the one before, or a keep-alive counting more pieces than came,
// ends the exec with ErrStdinLost naming the gap, where the client would
// otherwise wait for good for an acknowledgement.
//
// # Deletes
//
// Each host agent consumes pod.delete.requested with its own durable
// (hostagent-<host>), through the bus Router like every service (typed
// handlers; an event that does not decode is dead-lettered with its
// reason). A process serving every host (PODVISOR_HOSTAGENT_HOST=*) reads
// deletes on one durable for all its agents instead (RunDeletes,
// hostagent-every-host): a durable per host would read each delete's pod
// record once per host, thousands of times on a large vCenter.
//
// For a pod on this host with a connected guest the agent sends stop with
// what is left of the pod's terminationGracePeriodSeconds (default 30),
// counted from the record's DeletionRequestedAt (all of it before the
// provisioner has recorded the delete), and waits for stopped, at most that
// plus StopSlack from before the stop is written, before acknowledging. A
// pod whose VM the record places on a host, and whose guest could not be
// told (its channel not connected yet, as after a restart of the host agent
// while its guests dial again; no agent of its host yet in a process
// serving every host; the stop not written, or answered with an error), is
// not acknowledged: the delete comes back after 0.5 s, doubling up to 5 s,
// until the grace period is over (counted from DeletionRequestedAt, or from
// the delete's time in the stream before the provisioner has recorded it).
// Past it, or on the delete's last delivery, it is acknowledged: the
// provisioner's power-off ends the containers. A channel that closes once
// the stop is sent ends the delete too. The agent's status reports during
// the stop show the containers terminating; the provisioner powers the VM
// off only once a report shows every container terminated or the grace
// period (plus a margin) has passed since the delete, so the power-off
// never cuts the grace period short.
//
// # Network services and pass-through data
//
// With Deps.Endpoints the agent serves the DNS service profiles of the
// networks realized on its host (KV net-services, net-hosts): it attaches
// to the port group at the profile's address and answers
// <pod>.<namespace>.pod.podvisor.local from IPAM's allocations on that
// network (netservices.go). With Deps.Modules it hands each module the
// pass-through data of its namespace as it applies on this host, after
// inheritance switch → port group → port (netdata.go).
//
// # Identity
//
// The host agent publishes only pod.containers.reported, reads the `pods`
// bucket, consumes pod.delete.requested and answers its two query subjects.
package hostagent
