// Package podstream is the client side of a pod's logs and exec streams
// (events.PodLogsRequest, events.PodExecRequest): it sends the request,
// reads the numbered answers in order, sends keep-alives, stdin and the
// cancel on the control subject the first answer names, and reports a
// lost message or the host agent's error. The CLI (`podvisor logs`,
// `podvisor exec`) and a guest cluster's node use it.
package podstream
