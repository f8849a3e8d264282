// Package vsphere is how podvisor services talk to vCenter: a session that
// stays logged in, and the few inventory lookups every service needs. It works
// the same against a real vCenter and against the simulator of shared/sim.
//
// # Connecting
//
// Configuration follows govc, so an environment that works for govc works
// for the services:
//
//	GOVC_URL=https://vc.example.com/sdk   # may carry user:pass@; "vc.example.com" is enough
//	GOVC_USERNAME=podvisor@vsphere.local  # overrides the URL's user
//	GOVC_PASSWORD_FILE=/run/secrets/vc    # or GOVC_PASSWORD; _FILE exists for all three
//	GOVC_INSECURE=1
//	GOVC_DATACENTER=DC0                   # optional when there is one datacenter
//
//	cfg, err := vsphere.ConfigFromEnv()
//	s, err := vsphere.Connect(ctx, cfg)
//	defer s.Close(ctx)
//
// A Session keeps itself logged in. vCenter drops idle sessions (30 min by
// default) and an administrator can terminate one at any time; a service that
// runs for weeks must not fail its next reconcile because of that. Two
// mechanisms, both from govmomi's building blocks:
//
//   - a keepalive (govmomi's session/keepalive handler) that, every
//     Config.KeepAlive while idle, asks vCenter who is logged in and logs in
//     again if no one is;
//   - a round tripper in front of it that catches NotAuthenticated on any
//     call, logs in once (concurrent failures share one login) and retries
//     the call once.
//
// Logins reports how many logins happened; more than one means a session was
// lost and restored.
//
// # Inventory
//
// The helpers read the datacenter in few calls and return errors that wrap
// ErrNotFound, ErrDuplicateName or ErrInvalidName, so callers can tell "create
// it" from "give up":
//
//	hosts, _ := s.Hosts(ctx)                          // cluster, pool, datastores, networks, capacity, state
//	pool, _ := s.ResourcePoolOfCluster(ctx, "cluster-1")
//	folder, _ := s.EnsureFolder(ctx, "podvisor/default") // idempotent, safe concurrently
//	vm, _ := s.FindVMIn(ctx, folder, "pv-"+uid)       // nil when absent: look up before create
//	ds, _ := s.DatastoreByName(ctx, "shared-ds")      // validate before building "[ds] path"
//	dvs, _ := s.DVSByName(ctx, "pv-dvs")
//
// vCenter accepts two VMs with one name in different folders (vcsim even in
// one), so FindVM reports ErrDuplicateName rather than pick one: podvisor's
// deterministic VM names are only safe if duplicates are noticed.
package vsphere
