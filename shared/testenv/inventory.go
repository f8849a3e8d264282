package testenv

import (
	"slices"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
)

// PutHostRecords writes the inventory's record of every host of the
// simulated datacenter (connected, with its cores and memory), as the
// scheduler's inventory would: for tests of a service that reads KV hosts
// without the scheduler running.
func (e *Env) PutHostRecords() {
	e.T.Helper()
	for _, h := range e.DC.Hosts() {
		Put(e, events.BucketHosts, events.HostRecordKey(h.Name), &events.HostRecord{HostInfo: events.HostInfo{
			Name: h.Name, Cluster: h.Cluster, ConnectionState: events.HostConnected, CPUCores: int32(h.Cores), MemoryBytes: h.MemoryBytes,
		}})
	}
}

// PutNetwork writes network-config's availability of a network: realized
// on the hosts of realized, scoped to those of scope.
func (e *Env) PutNetwork(name string, realized, scope []string) {
	e.T.Helper()
	// Sorted, as network-config writes them.
	realized, scope = slices.Sorted(slices.Values(realized)), slices.Sorted(slices.Values(scope))
	Put(e, events.BucketNetHosts, events.NetworkRecordKey(name), &events.NetworkAvailability{Network: name, Version: 1, Hosts: realized, Scope: scope})
}

// HostNames lists the names of the simulated datacenter's hosts of cluster
// ("": of every cluster), sorted.
func (e *Env) HostNames(cluster string) []string { return simtest.HostNames(e.DC, cluster) }

// ClusterOf is the cluster of a simulated host.
func (e *Env) ClusterOf(host string) string {
	e.T.Helper()
	return simtest.ClusterOf(e.T, e.DC, host)
}
