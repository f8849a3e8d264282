// Package guestchannel is the contract between a pod VM's agent (inside the
// guest) and the host agent of the host the VM runs on: the pod spec the
// agent receives, the boot configuration that tells it where its devices and
// its channel are, and the messages both sides exchange.
//
// It is to the guest what package events is to the bus: plain types, no
// transport policy, no dependencies beyond the standard library, so the
// agent (a static binary that ships inside guests) and the control plane's
// host agent both import it without pulling each other's dependencies.
//
// # Transport
//
// The channel is one byte stream: a unix socket for simulated guests, vsock
// on vSphere (the guest connects to the host, CID 2), or a serial port where
// neither exists. The agent always dials (or, on a serial line, speaks
// first); the host side listens. The hypervisor routes the guest's
// connection to the host the VM currently runs on, so after a migration the
// agent finds its connection closed, dials again and lands on the new host.
//
// # Framing
//
// Newline-delimited JSON: every message is one Envelope on one line, at most
// MaxFrame bytes. Binary data (log chunks, exec streams) is carried in
// []byte fields, which encoding/json writes as base64.
//
// The host side bounds its writes (Conn.SetWriteTimeout, SendBefore): a
// frame the agent does not take in time closes the channel. So the agent
// reads its channel without waiting on any one request: an exec's input is
// queued apart and written to the command at its pace (below, "Exec
// input").
//
// # Conversation
//
//	agent → host   hello   {protocol, agent version, pod uid, VM identity, boot id, capabilities}
//	agent → host   status  {full: true, every container's state}      (right after hello)
//	host  → agent  logs    {container, follow, previous, tail, fromEnd?, timestamps?, sinceTime?, limitBytes?} → log chunks, then one with EOF
//	host  → agent  exec    {container, command, stdin?, stdinWindow?} → exec.output*, exec.exit
//	host  → agent  exec.stdin {data, eof}                        (only when exec.stdin was true)
//	agent → host   exec.stdin.ack {taken}                        (only when exec.stdinWindow > 0)
//	host  → agent  stop    {grace period}                        → stopped (every container ended)
//	host  → agent  cancel  {id of a logs/exec request}           ends a follow or an exec
//	agent → host   status  {full: false, changed containers}     whenever a state changes
//	host  → agent  disk.key {wrapped key | error}                after a hello with a key request
//	host  → agent  resync  {}                                     → hello and a full status again
//
// Requests carry an ID chosen by the host; every answer repeats it. A side
// that receives a message of a type it does not know answers with an error
// message naming the type and otherwise ignores it, so both ends can grow
// new messages without breaking old peers. Protocol is bumped only for a
// change an old peer would misread. What an agent serves beyond the
// message set of its Protocol it announces in Hello.Capabilities (Cap*),
// and the host side uses a capability only when announced: an agent that
// predates one never sees what it would not understand.
//
// # Exec input
//
// An exec's stdin has credit-based flow control, as an SSH channel's or an
// HTTP/2 stream's window: the host gives the exec a StdinWindow (at most
// MaxExecStdinWindow) to an agent announcing CapExecStdinAck, never has
// more than that many bytes of input sent and not yet acknowledged, and
// the agent answers with exec.stdin.ack {taken}: the bytes it is done with
// since the exec began (written into the command's stdin pipe, or dropped
// once the command closed it), a count that only grows, sent once the
// queue is written or every quarter window while it is not, never per
// byte. The agent's queue of input never holds more than the window; a
// host that sends more has that exec fail ("the host sent more input than
// the stdin window allows"). So input of any size goes at the pace the
// command reads it, and a command that never reads holds its sender, as a
// pipe holds its writer. The host agent passes the window on from the
// client (events.PodExecRequest.StdinWindow) and the acknowledgements back
// to it, end to end.
//
// An exec without a window (an older host side, or a client that asks for
// none) gets what every exec had before: the agent queues its input as it
// comes, and fails the exec ("the command does not read its input") once
// more than 1 MiB waits unread. A host side facing an agent without the
// capability gives the exec no window and acknowledges its client's input
// itself as it writes it to the channel.
//
// On every (re)connection the agent sends hello and a full status: the host
// side keeps no state it cannot rebuild from that. On a serial line the
// agent cannot see the host side connect again (the port stays open while
// the hypervisor's connection behind it is remade), so the host side asks
// with resync; lines that do not decode are skipped there, since a
// reconnection can cut a frame.
//
// # Logs from the end
//
// A logs request with FromEnd (only to an agent announcing
// CapLogsFromEnd) starts at the end of the container's current log as the
// agent takes it: without Follow it sends nothing (it still fails for an
// unknown container, or with Previous for one never restarted), with
// Follow every byte written from then on, across rotations and restarts
// as any follow. It is what `logs -f --tail 0` asks for: TailLines 0 means
// the whole log, and the last line read first and left out of a follow
// loses or repeats a line written between the two requests. An agent that
// predates the capability would read a FromEnd request as the whole log,
// so the host side never sends it one: it asks such an agent for the last
// line and then follows from that line, leaving it out, as clients did
// before (a line written between the two requests can be lost).
//
// # Line times
//
// An agent announcing CapLogsTimestamps keeps the time each line was
// written (its log files are in the CRI log format, a record a line or a
// piece of one) and takes three more options of a logs request:
// Timestamps prefixes each line with its time and a space, as the kubelet
// does (`logs --timestamps`); SinceTime leaves out the lines written
// before it (`--since`, `--since-time`; a line written in pieces has the
// time of its first, and is sent whole or not at all); LimitBytes ends the
// answer after that many bytes of it (`--limit-bytes`). Without them the
// answer is the container's bytes as it wrote them, as before. An agent
// that predates the capability would ignore them, so the host side sends
// it none: it refuses the request, naming the option.
//
// # The previous instance across boots
//
// A logs request with Previous reads the instance the container's
// lastState names. An agent announcing CapLogsAcrossBoots keeps its logs
// across its boots on the same ephemeral disk, so before a container's
// first restart in a boot that is the earlier boot's last instance, as
// the pod's record carries it. It answers NoPreviousInstance only when the
// disk holds none: the host side, finding the pod's last state carried
// from an earlier boot, can then say that boot ran in an earlier pod VM
// whose log is not kept.
//
// # Containers completed in an earlier boot
//
// A pod VM made again for a pod that ran before (its host lost, its VM
// re-created) gets in its spec the containers that terminated for good
// there (Container.Completed, with their terminated state): the agent does
// not start them and reports them terminated with that state and no
// restart from its first status on. The field is in the spec, read before
// any hello, so it cannot wait for a capability: an agent that predates it
// refuses such a spec (specs are decoded strictly). The provisioner sets
// it only for a boot after one of the pod (a new pod VM, or the same VM
// powered on again), so the pod VMs' boot
// disk must be of a build that has it before a provisioner that sets it
// runs.
//
// # Channel token
//
// Where the host side listens on a network (the host agents' concentrator
// of network serial ports), anyone who reaches it could say hello; the pod
// spec's ChannelToken, given back in Hello, proves the hello comes from the
// pod's VM (ChannelToken: an HMAC of the pod's identity under a key the
// provisioner and the concentrator share).
//
// # Secure instantiation
//
// A spec with Encryption makes the agent wait for its disk key: every hello
// carries a KeyRequest (an X25519 public key made at boot, and the spec's
// nonce) until the host answers with a disk.key message holding the key
// wrapped for that public key and the VM's identity (SealDiskKey,
// OpenDiskKey: HPKE, RFC 9180). The host side never sees the key in clear.
package guestchannel
