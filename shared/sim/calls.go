package sim

import (
	"maps"
	"sync"
)

// Counting the SOAP calls the datacenter serves.
//
// What a client costs a vCenter is, first of all, how many calls it makes:
// each one is a round trip, an XML encode and decode on both sides and,
// on a real vCenter, a trip through its session and authorization layers.
// The datacenter counts every method it serves, by name, so that a
// measurement (podvisor bench) can say how many calls a pod took.

// callCounter counts calls by method name.
type callCounter struct {
	mu sync.Mutex
	n  map[string]int64
}

func (c *callCounter) add(method string) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int64{}
	}
	c.n[method]++
	c.mu.Unlock()
}

// Calls returns how many SOAP calls of each method the datacenter served
// since it started, its own inventory building included: take one
// snapshot before and one after what is measured and subtract them
// (CallsSince).
func (d *Datacenter) Calls() map[string]int64 {
	d.calls.mu.Lock()
	defer d.calls.mu.Unlock()
	return maps.Clone(d.calls.n)
}

// CallsSince returns the calls served since the snapshot before (from
// Calls), by method, leaving out the methods not called since.
func CallsSince(before, after map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for m, n := range after {
		if d := n - before[m]; d > 0 {
			out[m] = d
		}
	}
	return out
}

// TotalCalls sums calls by method.
func TotalCalls(calls map[string]int64) int64 {
	var n int64
	for _, c := range calls {
		n += c
	}
	return n
}
