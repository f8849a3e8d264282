// Package vspc speaks the VMware telnet extension of network serial ports
// that use a virtual serial port concentrator (vSPC): the proxy's side
// (Proxy, Conn), for the host agents' concentrator, and the host's side
// (Dial, HostConn), for the simulated hosts.
//
// A VM's network serial port whose backing names a proxy URI
// (VirtualSerialPortURIBackingInfo.ProxyURI) is connected by the host the VM
// runs on to that proxy over telnet. The host says which VM the port belongs
// to (VM-VC-UUID, VM-NAME) and which of its ports it is (DO-PROXY's direction
// and service URI), and, what makes the proxy necessary on a vCenter, it
// asks the proxy before a vMotion: vSphere refuses to vMotion a VM whose
// network serial port connects to a remote system directly. During a
// vMotion the proxy holds two connections for one port, the source host's
// and the target's, and moves the port from one to the other when the
// target says the move is complete; the line a Conn presents to its reader
// goes on across it, so the guest's channel never sees the move.
//
// The exchange, after "Using a Proxy with vSphere Virtual Serial Ports"
// (VMware's vSphere SDK documentation):
//
//	host:  IAC WILL VMWARE-TELNET-EXT            proxy: IAC DO VMWARE-TELNET-EXT
//	host:  SB KNOWN-SUBOPTIONS-1 <codes> SE      proxy: SB KNOWN-SUBOPTIONS-2 <codes> SE,
//	                                                    SB GET-VM-VC-UUID SE, SB GET-VM-NAME SE
//	host:  SB DO-PROXY <S|C> <service URI> SE   proxy: SB WILL-PROXY SE
//	host:  SB VM-VC-UUID <uuid> SE, SB VM-NAME <name> SE
//	… data, each 0xFF byte doubled …
//	source host: SB VMOTION-BEGIN <seq> SE       proxy: SB VMOTION-GOAHEAD <seq> <secret> SE
//	target host (a new connection, after the same opening):
//	             SB VMOTION-PEER <seq> <secret> SE   proxy: SB VMOTION-PEER-OK <seq> SE
//	target host: SB VMOTION-COMPLETE <seq> SE    (the proxy writes to the target from now on)
//	source host: SB VMOTION-ABORT <seq> SE       (instead: the proxy stays with the source)
//
// After VMOTION-GOAHEAD the proxy holds what it writes to the VM (up to
// 1 MiB) until the move completes or is aborted, and then writes it to the
// connection the port stays on. Only the source, which began the move, may
// abort it. A target host may say VMOTION-PEER at the start of its
// connection or after answering the proxy's questions; until its
// connection has carried data it is taken as a target, not a new line.
//
// What the VM writes reaches a Conn's reader in the order it wrote it. At
// VMOTION-COMPLETE the source host may still be passing on the VM's last
// bytes, so the proxy does not close the source's connection: it ends its
// own side (which tells the host the port has moved) and goes on reading
// it until the host closes it or Proxy.DrainTimeout passes (3s by
// default). Whatever the target sends meanwhile waits behind it.
//
// A move can also end unsaid: vSphere may give a vMotion up without
// VMOTION-ABORT (its target never connects). A VMOTION-BEGIN on the
// port's connection while a move has no target yet therefore drops that
// move, sending what it held to the source and forgetting its secret, and
// is answered with VMOTION-GOAHEAD; while a move has its target, a new
// VMOTION-BEGIN is answered VMOTION-NOTNOW.
//
// Each connection of a port buffers at most 1 MiB its Conn's reader has
// not read. Past that the proxy stops reading the connection, so a slow
// reader slows the host through TCP rather than growing the proxy; it
// also delays the commands behind that data, a VMOTION-BEGIN among them
// (vSphere then fails the vMotion, as it does for a busy proxy).
//
// Written here rather than taken from a telnet library: the Go telnet
// packages handle options but not the subnegotiations this needs, and the
// part of telnet used is small (IAC escaping, option replies, SB … SE).
package vspc
