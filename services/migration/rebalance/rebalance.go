package rebalance

import (
	"fmt"
	"slices"
	"sort"

	"github.com/podvisor/podvisor/events"
)

// Options tune a plan.
type Options struct {
	// MaxMoves bounds the plan (default 10).
	MaxMoves int
	// Threshold is the load spread (most minus least loaded, 0 to 1) below
	// which the hosts count as balanced (default 0.1).
	Threshold float64
	// SameCluster keeps every move inside the pod's cluster.
	SameCluster bool
}

// Move is one planned migration.
type Move struct {
	Namespace, Pod, UID string
	From, To            string
	// FromLoad and ToLoad are the two hosts' loads before the move.
	FromLoad, ToLoad float64
}

func (m Move) String() string {
	return fmt.Sprintf("%s: %s (%.0f%%) → %s (%.0f%%)", events.PodKey(m.Namespace, m.Pod), m.From, m.FromLoad*100, m.To, m.ToLoad*100)
}

type host struct {
	rec       *events.HostRecord
	cpu, mem  int64
	count     int                 // every pod on the host
	pods      []*events.PodRecord // the ones that can move (Running)
	available map[string]bool     // datastores
}

func (h *host) load() float64 { return h.loadWith(0, 0) }

func (h *host) loadWith(cpu, mem int64) float64 {
	var c, m float64
	if h.rec.CPUCapacityMilli > 0 {
		c = float64(h.cpu+cpu) / float64(h.rec.CPUCapacityMilli)
	}
	if h.rec.MemoryCapacityBytes > 0 {
		m = float64(h.mem+mem) / float64(h.rec.MemoryCapacityBytes)
	}
	return max(c, m)
}

func podMemory(p *events.PodRecord) int64 {
	if p.Size.MemoryMiB > 0 {
		return p.Size.MemoryMiB << 20
	}
	return p.Size.MemoryBytes
}

// Plan returns the moves that even out the hosts' load. hosts are the
// scheduler's host records, pods the provisioner's pod records, nets the
// availability of each network (network-config's net-hosts).
func Plan(hosts []*events.HostRecord, pods []*events.PodRecord, nets map[string]*events.NetworkAvailability, o Options) []Move {
	if o.MaxMoves <= 0 {
		o.MaxMoves = 10
	}
	if o.Threshold <= 0 {
		o.Threshold = 0.1
	}
	byName := map[string]*host{}
	var all []*host
	for _, r := range hosts {
		h := &host{rec: r, available: map[string]bool{}}
		for _, d := range r.Datastores {
			h.available[d] = true
		}
		byName[r.Name] = h
		all = append(all, h)
	}
	for _, p := range pods {
		h, ok := byName[p.Host]
		if !ok {
			continue
		}
		h.cpu += p.Size.CPUMilli
		h.mem += podMemory(p)
		h.count++
		if (p.Phase == events.PodPhaseRunning || p.Phase == events.PodPhaseStarting) && p.DeletionRequestedAt.IsZero() && p.VMRef != "" {
			h.pods = append(h.pods, p)
		}
	}
	// Smaller pods first: they fit more places and move faster.
	for _, h := range all {
		sort.SliceStable(h.pods, func(i, j int) bool { return podMemory(h.pods[i]) < podMemory(h.pods[j]) })
	}
	schedulable := func(h *host) bool { return h.rec.Schedulable() }

	var moves []Move
	moved := map[string]bool{}
	for len(moves) < o.MaxMoves {
		// The most loaded host that has a pod to give, and every
		// schedulable host from the least loaded up.
		sort.SliceStable(all, func(i, j int) bool { return all[i].load() > all[j].load() })
		var targets []*host
		for _, h := range all {
			if schedulable(h) {
				targets = append(targets, h)
			}
		}
		slices.Reverse(targets)
		if len(targets) == 0 {
			break
		}
		best := findMove(all, targets, nets, moved, o)
		if best == nil {
			break
		}
		moves = append(moves, best.Move)
		moved[best.pod.UID] = true
		best.from.cpu -= best.pod.Size.CPUMilli
		best.from.mem -= podMemory(best.pod)
		best.from.pods = slices.DeleteFunc(best.from.pods, func(p *events.PodRecord) bool { return p == best.pod })
		best.from.count--
		best.to.cpu += best.pod.Size.CPUMilli
		best.to.mem += podMemory(best.pod)
		best.to.count++
	}
	return moves
}

type candidate struct {
	Move
	pod      *events.PodRecord
	from, to *host
}

func findMove(sources, targets []*host, nets map[string]*events.NetworkAvailability, moved map[string]bool, o Options) *candidate {
	least := targets[0].load()
	for _, from := range sources {
		if from.rec.ConnectionState != events.HostConnected {
			continue // a vMotion needs the source answering
		}
		fromLoad := from.load()
		if fromLoad-least < o.Threshold {
			return nil // balanced: no source is far enough above the least loaded host
		}
		for _, p := range from.pods {
			if moved[p.UID] {
				continue
			}
			for _, to := range targets {
				if to == from || to.load() >= fromLoad {
					break
				}
				if !fits(p, from, to, nets, o) {
					continue
				}
				pm := podMemory(p)
				after := max(from.loadWith(-p.Size.CPUMilli, -pm), to.loadWith(p.Size.CPUMilli, pm))
				if after >= fromLoad {
					continue
				}
				return &candidate{Move: Move{Namespace: p.Namespace, Pod: p.Name, UID: p.UID, From: from.rec.Name, To: to.rec.Name,
					FromLoad: fromLoad, ToLoad: to.load()}, pod: p, from: from, to: to}
			}
		}
	}
	return nil
}

// fits applies what the scheduler and the migration prechecks require of a
// target: room, the pod's networks realized, its datastores mounted.
func fits(p *events.PodRecord, from, to *host, nets map[string]*events.NetworkAvailability, o Options) bool {
	if o.SameCluster && to.rec.Cluster != from.rec.Cluster {
		return false
	}
	if to.rec.CPUCapacityMilli > 0 && to.cpu+p.Size.CPUMilli > to.rec.CPUCapacityMilli {
		return false
	}
	if to.rec.MemoryCapacityBytes > 0 && to.mem+podMemory(p) > to.rec.MemoryCapacityBytes {
		return false
	}
	if to.rec.MaxPods > 0 && to.count >= to.rec.MaxPods {
		return false
	}
	for _, n := range p.Networks {
		a, ok := nets[n]
		if !ok || !a.Realized(to.rec.Name) {
			return false
		}
	}
	for _, d := range p.Datastores {
		if !to.available[d] {
			return false
		}
	}
	return true
}
