// Package podstream is the client side of a pod's logs and exec streams
// (events.PodLogsRequest, events.PodExecRequest): it sends the request,
// reads the numbered answers in order, sends keep-alives, stdin and the
// cancel on the control subject the first answer names, and reports a
// lost message or the host agent's error. The CLI (`podvisor logs`,
// `podvisor exec`) and a guest cluster's node use it.
//
// An exec's stdin goes within a window (StdinWindow, asked for in the
// request): no more than the window, nor more than
// events.PodStreamStdinPieces pieces (small reads), is sent and not yet
// acknowledged, so input of any size reaches the command at the pace it
// reads it. A host agent that grants no window gets the input as it is
// read. Every piece is numbered, and keep-alives say how many were sent,
// so that a host agent that lost one on the way ends the exec with an
// error naming the gap instead of leaving the client waiting for an
// acknowledgement that cannot come.
package podstream
