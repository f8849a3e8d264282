// Package fabric is network-config's view of vCenter networking: hosts and
// their connection state, distributed switches and their member hosts, and
// distributed port groups.
//
// It is deliberately small — what a logical network needs and nothing else —
// and speaks only the vSphere API, so it works the same against vcsim and a
// real vCenter. A few facts shape it:
//
//   - A port group's settings (VLAN, security policy) live on the switch and
//     apply on every member host; a host "has" a network by being a member
//     of the switch carrying it. Membership changes are switch
//     reconfigurations, serialized per switch in-process (vCenter rejects a
//     stale config version with ConcurrentAccess), and JoinAll batches them.
//   - Port group names are unique per datacenter, so EnsurePortGroup moves a
//     port group that sits on the wrong switch instead of creating a twin.
//   - ReconfigureDVPortgroup replaces the whole config; EnsurePortGroup
//     always sends the full spec.
//   - vcsim leaves a stale network reference on a host that left a switch,
//     so whether a host carries a port group is read as "member of the
//     switch and the port group is among the host's networks".
//
// Security settings follow vSphere's inheritance: a nil setting in
// PortGroupSpec is "inherited from the switch", a set one overrides it, and
// ports may override the port group (switch → network → port).
package fabric
