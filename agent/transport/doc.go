// Package transport opens the pod VM agent's channel to its host, whatever
// carries it: a unix socket (simulated guests, whose hypervisor forwards the
// connection), vsock (a pod VM on vSphere: the VMCI socket reaches the host
// the VM runs on now) or a serial port (a hypervisor without vsock, such as
// QEMU without vhost-vsock, where the host side holds the port's other end).
//
// The address is BootConfig.Channel: "unix:<path>", "vsock:<cid>:<port>" or
// "serial:<device>". Dial returns a byte stream for guestchannel.NewConn.
package transport
