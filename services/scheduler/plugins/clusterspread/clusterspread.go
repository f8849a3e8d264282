// Package clusterspread spreads the replicas of an application across
// clusters: the fewer pods of the pod's spread group (namespace plus app
// label, see framework.SpreadGroup) a host's cluster already holds, the
// higher the host scores. A cluster is a failure domain (its own datastores,
// its own HA), so this is the cheap half of topology spread.
package clusterspread

import (
	"context"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "ClusterSpread"

// Plugin is the ClusterSpread score.
type Plugin struct {
	snapshot func() *framework.Snapshot
}

var (
	_ framework.PreScorePlugin = (*Plugin)(nil)
	_ framework.ScorePlugin    = (*Plugin)(nil)
)

// New is the plugin's factory.
func New(h framework.Handle) (framework.Plugin, error) {
	return &Plugin{snapshot: h.Snapshot}, nil
}

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// state is the group's count per cluster id and the largest count among
// the clusters of the feasible hosts.
type state struct {
	counts []int
	max    int
}

// PreScore implements framework.PreScorePlugin.
func (pl *Plugin) PreScore(_ context.Context, cs *framework.CycleState, p *framework.PodInfo, hosts []*framework.Host) *framework.Status {
	s := pl.snapshot()
	st := &state{counts: s.GroupCounts(p.SpreadGroup)}
	seen := make([]bool, len(st.counts))
	for _, h := range hosts {
		id := h.ClusterID()
		if h.Owner() != s || id >= len(seen) || seen[id] {
			continue
		}
		seen[id] = true
		if c := st.counts[id]; c > st.max {
			st.max = c
		}
	}
	cs.Write(Name, st)
	return nil
}

// Score implements framework.ScorePlugin.
func (pl *Plugin) Score(_ context.Context, cs *framework.CycleState, p *framework.PodInfo, h *framework.Host) (int64, *framework.Status) {
	v, _ := cs.Read(Name)
	st, _ := v.(*state)
	if st == nil || st.max == 0 || h.ClusterID() >= len(st.counts) {
		return framework.MaxHostScore, nil
	}
	c := st.counts[h.ClusterID()]
	return framework.MaxHostScore * int64(st.max-c) / int64(st.max), nil
}
