// Package plugins registers the scheduler's built-in plugins and builds the
// default profiles.
package plugins

import (
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/plugins/antiaffinity"
	"github.com/podvisor/podvisor/services/scheduler/plugins/balancedallocation"
	"github.com/podvisor/podvisor/services/scheduler/plugins/clusterspread"
	"github.com/podvisor/podvisor/services/scheduler/plugins/datastoreavailable"
	"github.com/podvisor/podvisor/services/scheduler/plugins/hostready"
	"github.com/podvisor/podvisor/services/scheduler/plugins/hostselector"
	"github.com/podvisor/podvisor/services/scheduler/plugins/imagelocality"
	"github.com/podvisor/podvisor/services/scheduler/plugins/leastallocated"
	"github.com/podvisor/podvisor/services/scheduler/plugins/mostallocated"
	"github.com/podvisor/podvisor/services/scheduler/plugins/networkavailable"
	"github.com/podvisor/podvisor/services/scheduler/plugins/resourcesfit"
)

// NewRegistry returns a registry of every built-in plugin.
func NewRegistry() framework.Registry {
	return framework.Registry{
		hostready.Name:          hostready.New,
		resourcesfit.Name:       resourcesfit.New,
		networkavailable.Name:   networkavailable.New,
		hostselector.Name:       hostselector.New,
		antiaffinity.Name:       antiaffinity.New,
		imagelocality.Name:      imagelocality.New,
		leastallocated.Name:     leastallocated.New,
		mostallocated.Name:      mostallocated.New,
		balancedallocation.Name: balancedallocation.New,
		clusterspread.Name:      clusterspread.New,
		datastoreavailable.Name: datastoreavailable.New,
	}
}

// DefaultProfile is the profile for a strategy (framework.StrategyBinpack or
// framework.StrategySpread). Filters are ordered cheapest and most selective
// first, so that most hosts are rejected by an integer comparison. Among
// scores the allocation score carries the most weight because it is what
// the strategy is about; image locality comes next because a pull costs
// seconds while imbalance costs little.
func DefaultProfile(strategy string) framework.Profile {
	alloc := mostallocated.Name
	if strategy == framework.StrategySpread {
		alloc = leastallocated.Name
	}
	return framework.Profile{
		Name:     "default-" + strategy,
		Strategy: strategy,
		Filters: []string{
			hostready.Name,
			resourcesfit.Name,
			networkavailable.Name,
			datastoreavailable.Name,
			hostselector.Name,
			antiaffinity.Name,
		},
		Scores: []framework.PluginWeight{
			{Name: alloc, Weight: 3},
			{Name: imagelocality.Name, Weight: 2},
			{Name: balancedallocation.Name, Weight: 1},
			{Name: clusterspread.Name, Weight: 1},
			{Name: networkavailable.Name, Weight: 1},
		},
	}
}
