// Package nics configures the pod VM's network cards from the pod spec, as
// a VM's guest does at boot: the hypervisor provides each card (the link,
// with the MAC address the VM was given), the guest gives it its address
// and routes.
//
// Each guestchannel.NIC of the spec is matched to an interface by MAC
// address (the card's identity, whatever the guest calls it), or by VM
// order (eth0, eth1, …) when the spec names no MAC. The interface is
// brought up with the IPAM address and prefix; the first NIC that names a
// gateway gets the default route through it. Configuring twice changes
// nothing (address and route are replaced, not added).
//
// The pod's containers share the guest's network namespace, so this is the
// pod's network: a container reaches other pods on its networks by IP, and
// the pod's IP is the address of its primary (first) NIC.
//
// A driver reads its card's MAC address when it binds, so a card whose
// address the hypervisor changed under a running guest keeps the old one
// until it is bound again (Reprobe): a forked child's cards (an instant
// clone gives them addresses of their own) and the cards of a pod forked
// ahead of its network (the attach gives them the pod's). The agent
// rebinds them at a takeover and again once the network is attached,
// before Configure looks for the spec's MACs.
package nics
