// Package compat checks a guest cluster's software against what the
// infrastructure and the SDDC offer, with requires/offers documents.
//
// # The document format (compat.podvisor.io/v1)
//
// One format serves both sides. An Offers document lists capabilities and
// their versions; a Requires document lists requirements on capabilities
// of named providers:
//
//	apiVersion: compat.podvisor.io/v1
//	kind: Offers
//	provider: sddc            # infrastructure | sddc | guestcluster
//	name: vcsim               # what made it (a product)
//	version: 8.0.2.0
//	offers:
//	  vcenter.version: 8.0.2.0
//	  vcenter.build: "21560480"
//	  vsphere.api: 8.0.2.0
//	  vsphere.api.feature/ovfManager: present
//	---
//	apiVersion: compat.podvisor.io/v1
//	kind: Requires
//	provider: guestcluster
//	name: kubernetes
//	version: v1.37.2
//	requires:
//	- {provider: sddc, name: vcenter.version, version: ">=8.0"}
//	- {provider: sddc, name: vsphere.api.feature/ovfManager}          # present
//	- {provider: infrastructure, name: podvisor.io/v1alpha1/VirtualMachine}
//
// A requirement's version is a list of constraints separated by spaces,
// all of which must hold: "=1.2", ">=8.0", ">1", "<9", "<=8.0.3", or empty
// for "offered at all". Versions compare as dotted numbers, a leading "v"
// ignored; a part that is not a number compares as text. The format's
// version is the apiVersion: a change that breaks readers makes
// compat.podvisor.io/v2, readers refuse an apiVersion they do not know.
//
// # Who offers what
//
//   - InfrastructureOffers: podvisor's own services and APIs (this build).
//   - SDDCOffers: read from vCenter: About (version, build, API version,
//     product) and the API features its ServiceContent advertises, one
//     vsphere.api.feature/<manager> per manager present. vcsim reports its
//     own.
//   - GuestClusterRequires: the requirements of each guest cluster version
//     podvisor knows.
//
// Check computes the unmet requirements; Report posts the result as a
// vCenter event on the guest cluster's compute cluster
// (EventManager.PostEvent, seen with `govc events`), and Result.Event is
// the guestcluster.compatibility payload to publish. A guest cluster
// create or upgrade is refused when Check finds anything unmet, naming
// each requirement.
package compat
