package framework

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// Plugin is anything the framework runs.
type Plugin interface {
	Name() string
}

// FilterPlugin decides whether a host can take a pod. It must be cheap and
// must not allocate on the common path: it runs for every evaluated host.
type FilterPlugin interface {
	Plugin
	Filter(ctx context.Context, state *CycleState, pod *PodInfo, host *Host) *Status
}

// PreScorePlugin prepares scoring once per pod (for example one read of
// the image locality model); hosts are the feasible ones.
type PreScorePlugin interface {
	Plugin
	PreScore(ctx context.Context, state *CycleState, pod *PodInfo, hosts []*Host) *Status
}

// ScorePlugin ranks a feasible host from 0 to MaxHostScore.
type ScorePlugin interface {
	Plugin
	Score(ctx context.Context, state *CycleState, pod *PodInfo, host *Host) (int64, *Status)
}

// ReservePlugin holds something for the pod on the chosen host before the
// placement is made durable; Unreserve undoes it when a later step fails.
type ReservePlugin interface {
	Plugin
	Reserve(ctx context.Context, state *CycleState, pod *PodInfo, host *Host) *Status
	Unreserve(ctx context.Context, state *CycleState, pod *PodInfo, host *Host)
}

// CycleState carries data between the extension points of one pod's
// scheduling cycle. It is used by one goroutine at a time.
type CycleState struct {
	data map[string]any
}

// NewCycleState returns an empty state.
func NewCycleState() *CycleState { return &CycleState{data: map[string]any{}} }

// Write stores a value under a key (by convention the plugin's name).
func (c *CycleState) Write(key string, v any) { c.data[key] = v }

// Read returns the value stored under key.
func (c *CycleState) Read(key string) (any, bool) {
	v, ok := c.data[key]
	return v, ok
}

// Handle is what plugin factories get from the framework: the profile they
// run under and the read models they may consult.
type Handle interface {
	Profile() *Profile
	// Snapshot is the snapshot being scheduled against.
	Snapshot() *Snapshot
	// Service returns a dependency registered by the service (for example
	// the image locality reader) by name, or nil.
	Service(name string) any
}

// Factory builds a plugin.
type Factory func(h Handle) (Plugin, error)

// Registry maps plugin names to factories.
type Registry map[string]Factory

// Register adds a factory; a name registered twice is an error so that two
// plugins never silently shadow each other.
func (r Registry) Register(name string, f Factory) error {
	if _, ok := r[name]; ok {
		return fmt.Errorf("plugin %q registered twice", name)
	}
	r[name] = f
	return nil
}

// Merge adds every factory of another registry.
func (r Registry) Merge(o Registry) error {
	for name, f := range o {
		if err := r.Register(name, f); err != nil {
			return err
		}
	}
	return nil
}

// Names lists the registered plugin names, sorted.
func (r Registry) Names() []string {
	out := make([]string, 0, len(r))
	for n := range r {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Diagnosis explains why a pod fits nowhere: per reason, how many hosts
// failed with it (each host counted once, under its first failing filter).
type Diagnosis struct {
	// Hosts is the number of hosts considered.
	Hosts int
	// Reasons counts hosts per CamelCase reason.
	Reasons map[string]int
	// Messages maps each reason to its phrase.
	Messages map[string]string
	// Unresolvable is true when every host failed with
	// UnschedulableAndUnresolvable (no change on the hosts will help).
	Unresolvable bool
}

// Message renders the diagnosis the way kube-scheduler does, largest count
// first: "0/16 hosts: 10 insufficient memory, 6 network backend not on host".
func (d *Diagnosis) Message() string {
	type rc struct {
		reason string
		n      int
	}
	list := make([]rc, 0, len(d.Reasons))
	for r, n := range d.Reasons {
		list = append(list, rc{r, n})
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].n != list[j].n {
			return list[i].n > list[j].n
		}
		return list[i].reason < list[j].reason
	})
	parts := make([]string, len(list))
	for i, x := range list {
		msg := d.Messages[x.reason]
		if msg == "" {
			msg = x.reason
		}
		parts[i] = fmt.Sprintf("%d %s", x.n, msg)
	}
	if len(parts) == 0 {
		return fmt.Sprintf("0/%d hosts: no hosts known", d.Hosts)
	}
	return fmt.Sprintf("0/%d hosts: %s", d.Hosts, strings.Join(parts, ", "))
}

// FitError is returned by Schedule when no host fits.
type FitError struct {
	Pod       *PodInfo
	Diagnosis Diagnosis
}

func (e *FitError) Error() string { return e.Diagnosis.Message() }
