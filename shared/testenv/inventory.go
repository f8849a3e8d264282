package testenv

import "github.com/podvisor/podvisor/events"

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
	Put(e, events.BucketNetHosts, events.NetworkRecordKey(name), &events.NetworkAvailability{Network: name, Version: 1, Hosts: realized, Scope: scope})
}
