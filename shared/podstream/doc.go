// Package podstream is the client side of a pod's logs and exec streams
// (events.PodLogsRequest, events.PodExecRequest): it sends the request,
// reads the numbered answers in order, sends keep-alives, stdin and the
// cancel on the control subject the first answer names, and reports a
// lost message or the host agent's error. The CLI (`podvisor logs`,
// `podvisor exec`) and a guest cluster's node use it.
//
// An exec's stdin goes within a window (StdinWindow, asked for in the
// request): no more than the window is sent and not yet acknowledged, so
// input of any size reaches the command at the pace it reads it. A host
// agent that grants no window gets the input as it is read.
package podstream
