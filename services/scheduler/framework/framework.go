package framework

import (
	"context"
	"errors"
	"fmt"
)

// Packing strategies of a profile.
const (
	// StrategyBinpack fills the fullest hosts first (MostAllocated), which
	// keeps whole hosts free for large pods and for maintenance.
	StrategyBinpack = "binpack"
	// StrategySpread keeps load even (LeastAllocated), which limits the
	// blast radius of a lost host.
	StrategySpread = "spread"
)

// PluginWeight is a score plugin and its weight in the profile.
type PluginWeight struct {
	Name   string `json:"name"`
	Weight int64  `json:"weight"`
}

// Profile is one scheduling configuration.
type Profile struct {
	// Name of the profile (for logs).
	Name string `json:"name"`
	// Strategy is StrategyBinpack or StrategySpread; it only changes the
	// allocation score (MostAllocated or LeastAllocated) that a default
	// score list contains.
	Strategy string `json:"strategy"`
	// Filters run in order; the first failing one is the host's reason.
	Filters []string `json:"filters"`
	// Scores with their weights.
	Scores []PluginWeight `json:"scores"`
	// Reserves run on the chosen host, in order.
	Reserves []string `json:"reserves,omitempty"`
	// PercentageOfHostsToScore bounds the search like kube-scheduler's
	// percentageOfNodesToScore: 0 = adaptive (50% minus 1% per 125 hosts,
	// at least 5%), 100 = every host. Fewer than 100 hosts are always
	// searched in full.
	PercentageOfHostsToScore int `json:"percentageOfHostsToScore,omitempty"`
	// CPUOvercommit multiplies a host's cores × 1000 millicores into the
	// CPU pod VMs may reserve. 1.0 (the default) reserves physical cores
	// only; memory is never overcommitted (a pod VM's memory is reserved).
	CPUOvercommit float64 `json:"cpuOvercommit,omitempty"`
	// MaxPodsPerHost caps pod VMs per host (0 = no cap).
	MaxPodsPerHost int `json:"maxPodsPerHost,omitempty"`
	// RequiredDatastores are datastores a host must mount to take a pod
	// VM (the DatastoreAvailable filter): the pod VM boot disk's.
	RequiredDatastores []string `json:"requiredDatastores,omitempty"`
}

// minFeasibleHostsToFind mirrors kube-scheduler's minFeasibleNodesToFind:
// below this many hosts the search is always exhaustive.
const minFeasibleHostsToFind = 100

// Validate checks the profile against a registry.
func (p *Profile) Validate(r Registry) error {
	var errs []error
	switch p.Strategy {
	case StrategyBinpack, StrategySpread:
	default:
		errs = append(errs, fmt.Errorf("profile %s: strategy: %q is not supported, want %q or %q", p.Name, p.Strategy, StrategyBinpack, StrategySpread))
	}
	check := func(field, name string) {
		if _, ok := r[name]; !ok {
			errs = append(errs, fmt.Errorf("profile %s: %s: unknown plugin %q (known: %v)", p.Name, field, name, r.Names()))
		}
	}
	for _, n := range p.Filters {
		check("filters", n)
	}
	for i, s := range p.Scores {
		check("scores", s.Name)
		if s.Weight <= 0 {
			errs = append(errs, fmt.Errorf("profile %s: scores[%d].weight: %d must be greater than zero", p.Name, i, s.Weight))
		}
	}
	for _, n := range p.Reserves {
		check("reserves", n)
	}
	if p.PercentageOfHostsToScore < 0 || p.PercentageOfHostsToScore > 100 {
		errs = append(errs, fmt.Errorf("profile %s: percentageOfHostsToScore: %d must be between 0 and 100", p.Name, p.PercentageOfHostsToScore))
	}
	if p.CPUOvercommit < 0 || p.CPUOvercommit > 0 && p.CPUOvercommit < 1 {
		errs = append(errs, fmt.Errorf("profile %s: cpuOvercommit: %g must be 0 (default 1.0) or at least 1.0", p.Name, p.CPUOvercommit))
	}
	if p.MaxPodsPerHost < 0 {
		errs = append(errs, fmt.Errorf("profile %s: maxPodsPerHost: %d must not be negative", p.Name, p.MaxPodsPerHost))
	}
	return errors.Join(errs...)
}

// CPUCapacityMilli is what pod VMs may reserve on a host with cores cores.
func (p *Profile) CPUCapacityMilli(cores int32) int64 {
	ratio := p.CPUOvercommit
	if ratio == 0 {
		ratio = 1
	}
	return int64(float64(cores) * 1000 * ratio)
}

type weightedScore struct {
	ScorePlugin
	weight int64
}

// Framework runs a profile's plugins.
type Framework struct {
	profile   Profile
	snapshot  *Snapshot
	services  map[string]any
	filters   []FilterPlugin
	preScores []PreScorePlugin
	scores    []weightedScore
	reserves  []ReservePlugin

	// nextStart is where the next search begins, so that a bounded search
	// does not always look at the same hosts.
	nextStart int
	// failed is reused between cycles to count failing statuses.
	failed []statusCount
}

type statusCount struct {
	s *Status
	n int
}

// New builds a framework for a profile. services are dependencies plugins
// may look up by name through their Handle (nil is fine).
func New(profile Profile, r Registry, snapshot *Snapshot, services map[string]any) (*Framework, error) {
	if err := profile.Validate(r); err != nil {
		return nil, err
	}
	f := &Framework{profile: profile, snapshot: snapshot, services: services}
	instances := map[string]Plugin{}
	get := func(name string) (Plugin, error) {
		if p, ok := instances[name]; ok {
			return p, nil
		}
		p, err := r[name](f)
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", name, err)
		}
		instances[name] = p
		if ps, ok := p.(PreScorePlugin); ok {
			f.preScores = append(f.preScores, ps)
		}
		return p, nil
	}
	for _, n := range profile.Filters {
		p, err := get(n)
		if err != nil {
			return nil, err
		}
		fp, ok := p.(FilterPlugin)
		if !ok {
			return nil, fmt.Errorf("profile %s: filters: plugin %s is not a filter", profile.Name, n)
		}
		f.filters = append(f.filters, fp)
	}
	for _, s := range profile.Scores {
		p, err := get(s.Name)
		if err != nil {
			return nil, err
		}
		sp, ok := p.(ScorePlugin)
		if !ok {
			return nil, fmt.Errorf("profile %s: scores: plugin %s is not a score plugin", profile.Name, s.Name)
		}
		f.scores = append(f.scores, weightedScore{sp, s.Weight})
	}
	for _, n := range profile.Reserves {
		p, err := get(n)
		if err != nil {
			return nil, err
		}
		rp, ok := p.(ReservePlugin)
		if !ok {
			return nil, fmt.Errorf("profile %s: reserves: plugin %s is not a reserve plugin", profile.Name, n)
		}
		f.reserves = append(f.reserves, rp)
	}
	return f, nil
}

// Profile implements Handle.
func (f *Framework) Profile() *Profile { return &f.profile }

// Snapshot implements Handle.
func (f *Framework) Snapshot() *Snapshot { return f.snapshot }

// Service implements Handle.
func (f *Framework) Service(name string) any { return f.services[name] }

// Result is a placement decision.
type Result struct {
	// Host is the chosen host.
	Host *Host
	// Score is its weighted score.
	Score int64
	// Evaluated and Feasible count the hosts filtered and those that fit.
	Evaluated, Feasible int
	// State is the cycle state (score plugins leave data there, e.g. the
	// image locality per datastore).
	State *CycleState
}

// statusExcluded is the reason of a host the pod must not go to.
var statusExcluded = NewStatus(UnschedulableAndUnresolvable, "MigrationSource", "source host of the migration")

// statusRefused is the reason of a host that refused one of the pod's
// networks. Not unresolvable: the network can be repaired there.
var statusRefused = NewStatus(Unschedulable, "NetworkRefused", "refused the pod's network")

// numHostsToFind is how many feasible hosts the search looks for.
func (f *Framework) numHostsToFind(n int) int {
	if n < minFeasibleHostsToFind {
		return n
	}
	pct := f.profile.PercentageOfHostsToScore
	if pct == 0 {
		pct = 50 - n/125
		if pct < 5 {
			pct = 5
		}
	}
	if pct >= 100 {
		return n
	}
	num := n * pct / 100
	if num < minFeasibleHostsToFind {
		return minFeasibleHostsToFind
	}
	return num
}

// Schedule picks a host for pod, or returns a *FitError with the diagnosis.
// It does not change the snapshot: the caller assumes the pod on the
// chosen host (Snapshot.AddPod) before scheduling the next one.
func (f *Framework) Schedule(ctx context.Context, pod *PodInfo) (*Result, error) {
	hosts := f.snapshot.Hosts()
	n := len(hosts)
	state := NewCycleState()
	if n == 0 {
		return nil, &FitError{Pod: pod, Diagnosis: Diagnosis{Reasons: map[string]int{}}}
	}
	f.snapshot.Resolve(pod)
	want := f.numHostsToFind(n)
	feasible := make([]*Host, 0, min(want, 256))
	f.failed = f.failed[:0]
	start := f.nextStart % n
	evaluated := 0
	for i := 0; i < n && len(feasible) < want; i++ {
		h := hosts[(start+i)%n]
		evaluated++
		if st := f.filter(ctx, state, pod, h); st != nil {
			f.countFailure(st)
			continue
		}
		feasible = append(feasible, h)
	}
	f.nextStart = (start + evaluated) % n
	if len(feasible) == 0 {
		return nil, &FitError{Pod: pod, Diagnosis: f.diagnosis(n)}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &Result{Evaluated: evaluated, Feasible: len(feasible), State: state}
	if len(feasible) == 1 || len(f.scores) == 0 {
		res.Host = feasible[0]
		return res, nil
	}
	for _, p := range f.preScores {
		if st := p.PreScore(ctx, state, pod, feasible); !st.IsSuccess() {
			return nil, fmt.Errorf("prescore %s: %w", p.Name(), st)
		}
	}
	best, bestScore := feasible[0], int64(-1)
	for _, h := range feasible {
		var total int64
		for _, s := range f.scores {
			v, st := s.Score(ctx, state, pod, h)
			if !st.IsSuccess() {
				return nil, fmt.Errorf("score %s on %s: %w", s.Name(), h.Name, st)
			}
			total += v * s.weight
		}
		if total > bestScore {
			best, bestScore = h, total
		}
	}
	res.Host, res.Score = best, bestScore
	return res, nil
}

// filter runs the filters on one host and returns the first failure.
func (f *Framework) filter(ctx context.Context, state *CycleState, pod *PodInfo, h *Host) *Status {
	if pod.Exclude != nil && pod.Exclude[h.Name] {
		return statusExcluded
	}
	if pod.Refused != nil && pod.Refused[h.Name] {
		return statusRefused
	}
	for _, p := range f.filters {
		if st := p.Filter(ctx, state, pod, h); !st.IsSuccess() {
			return st
		}
	}
	return nil
}

// RunFilters runs every filter on one host, as when a migration names its
// target: nil if the host fits, else the first failing status.
func (f *Framework) RunFilters(ctx context.Context, state *CycleState, pod *PodInfo, h *Host) *Status {
	f.snapshot.Resolve(pod)
	return f.filter(ctx, state, pod, h)
}

// RunReserve runs the reserve plugins on the chosen host; on failure the
// ones that ran are undone in reverse order.
func (f *Framework) RunReserve(ctx context.Context, state *CycleState, pod *PodInfo, h *Host) *Status {
	for i, p := range f.reserves {
		if st := p.Reserve(ctx, state, pod, h); !st.IsSuccess() {
			for j := i - 1; j >= 0; j-- {
				f.reserves[j].Unreserve(ctx, state, pod, h)
			}
			return st
		}
	}
	return nil
}

// RunUnreserve undoes every reserve plugin (when the durable reservation
// failed after RunReserve succeeded).
func (f *Framework) RunUnreserve(ctx context.Context, state *CycleState, pod *PodInfo, h *Host) {
	for j := len(f.reserves) - 1; j >= 0; j-- {
		f.reserves[j].Unreserve(ctx, state, pod, h)
	}
}

func (f *Framework) countFailure(st *Status) {
	for i := range f.failed {
		if f.failed[i].s == st {
			f.failed[i].n++
			return
		}
	}
	f.failed = append(f.failed, statusCount{st, 1})
}

func (f *Framework) diagnosis(hosts int) Diagnosis {
	d := Diagnosis{Hosts: hosts, Reasons: map[string]int{}, Messages: map[string]string{}, Unresolvable: true}
	for _, fc := range f.failed {
		d.Reasons[fc.s.Reason] += fc.n
		d.Messages[fc.s.Reason] = fc.s.Message
		if fc.s.Code != UnschedulableAndUnresolvable {
			d.Unresolvable = false
		}
	}
	return d
}
