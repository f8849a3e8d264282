// Package segment gives a simulated datacenter's networks real packets: it
// is the layer 2 fabric a hypervisor and its distributed switch provide,
// built from Linux bridges and veth pairs.
//
// # Segments and ports
//
// A segment is one broadcast domain: a Linux bridge per distributed port
// group. All simulated hosts share this machine's kernel, so one bridge
// spans every host of the port group, as the switch's uplinks join the
// hosts' ports into one VLAN. Without the 802.1Q module or bridge VLAN
// filtering (absent on these machines) a bridge per port group is the
// segment; two port groups never share one, so pods on different networks
// have no path between them. Bridges carry no address: the machine's own
// stack never routes between segments.
//
// A port is a VM's virtual NIC: a veth pair whose guest end is created in
// the guest's network namespace under the name the guest sees (eth0, eth1,
// … in VM order) with the VM's MAC address; the host end stays in this
// namespace and is plugged into the segment's bridge while the VM's host
// carries the port group. A port whose host does not carry its port group
// (the network left the host's scope, the port group went away) is
// unplugged and down, so its guest sees no carrier: the NIC is still
// there, the wire is not. The guest configures addresses itself, as a VM's
// guest does; the hypervisor only provides the link.
//
// # Names
//
// Interface names are limited to 15 bytes (IFNAMSIZ - 1) and live in one
// namespace shared by every simulator of the machine, parallel tests
// included. Each Fabric takes a fixed-width id from its process id and a
// per-process counter: bridges are b<id><n>, host ends v<id><n> (n in
// base 36), so two fabrics never collide. Close removes everything the
// fabric made.
package segment
