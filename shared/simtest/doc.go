// Package simtest starts a simulated vCenter for a test and stops it when the
// test ends. It is the one harness every podvisor test uses for vSphere:
//
//	func TestPlacement(t *testing.T) {
//		d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 4, Seed: 1})
//		c := simtest.Client(t, d)   // logged-in govmomi client, logged out at cleanup
//		...
//	}
//
// Each call builds its own datacenter on a random loopback port with its own
// temporary datastore directories, so tests may run in parallel (except those
// that use SetTaskDelay, which vcsim applies process-wide).
package simtest
