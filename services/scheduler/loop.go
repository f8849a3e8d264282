package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	locality "github.com/podvisor/podvisor/services/scheduler/plugins/imagelocality"
	"github.com/podvisor/podvisor/shared/bus"
)

// The scheduling loop is the only goroutine that runs the framework and
// writes reservations, so the snapshot it assumes pods into is consistent
// within a pass. Handlers submit requests and wait for the outcome.
//
// A pass takes every request queued (up to BatchSize), places them one
// after the other against the snapshot (each placed pod is assumed on its
// host, so the next one sees it), then writes the reservations with one
// compare-and-set per host, all hosts in parallel. A pod whose reservation
// the ledger refuses (another scheduler took the room) is placed again in
// the next pass, against the fresh entry.

// maxReserveAttempts bounds how often a pod is placed again after the
// ledger refused its host.
const maxReserveAttempts = 4

// commitParallelism bounds concurrent ledger writes.
const commitParallelism = 64

// hostCommitSpacing is the least time between the starts of two ledger
// writes of one host by this process. Every write is a synced JetStream
// store of the host's whole entry; in a burst, placements on a host arrive
// a pass at a time, so a committer that wrote as soon as the previous
// write ended would write the entry once or twice per pass. Waiting out
// the rest of the spacing first lets the passes in between join the next
// write (the group commit of hostCommitter). A host's first write of a
// burst is not delayed; nothing is answered before its write lands, so a
// decision is never announced before it is durable.
const hostCommitSpacing = 20 * time.Millisecond

// placement is where a pod goes.
type placement struct {
	Host, Cluster, ResourcePool string
	Datastores                  []string
}

// outcome is the answer to a request.
type outcome struct {
	placement placement
	// already: the pod held an allocation before this request (a replay).
	already bool
	fit     *framework.FitError
	err     error
	// refusals are the hosts that refused the pod's networks before it
	// was placed (see netcheck.go).
	refusals []events.HostRefusal
}

// request asks the loop to place a pod (or a migration's target).
type request struct {
	pod *framework.PodInfo
	// alloc is what to write in the ledger; its Key() identifies the
	// request (uid, or uid@migration for a migration target).
	alloc events.Allocation
	// target restricts the search to one host (a migration that names
	// its target).
	target   string
	attempts int
	// refusals are the hosts network-config's availability query refused
	// for this placement, in order (written by the host committers, read
	// by the loop after the request comes back to it).
	refusals []events.HostRefusal
	done     chan outcome
}

func newRequest(pod *framework.PodInfo, alloc events.Allocation) *request {
	return &request{pod: pod, alloc: alloc, done: make(chan outcome, 1)}
}

// submit queues a request and waits for its outcome. A request that
// reaches the queue after the loop stopped (handlers outlive the loop
// while the bus drains them) is answered ErrStopped rather than waited on
// forever.
func (s *Service) submit(ctx context.Context, r *request) outcome {
	select {
	case s.queue <- r:
	case <-ctx.Done():
		return outcome{err: ctx.Err()}
	case <-s.loopDone:
		return outcome{err: ErrStopped}
	}
	select {
	case o := <-r.done:
		s.metrics.outcome(ctx, o)
		o.refusals = r.refusals
		return o
	case <-ctx.Done():
		return outcome{err: ctx.Err()}
	case <-s.loopDone:
		select {
		case o := <-r.done: // answered on the way out
			return o
		default:
			return outcome{err: ErrStopped}
		}
	}
}

func (s *Service) scheduleLoop(ctx context.Context) {
	defer close(s.loopDone)
	for {
		batch := s.takeRetries()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
			case r := <-s.queue:
				batch = append(batch, r)
			case <-s.retryWake:
				batch = s.takeRetries()
			}
		}
		if ctx.Err() != nil {
			for _, r := range append(append(batch, s.takeRetries()...), s.drainQueue()...) {
				r.done <- outcome{err: ErrStopped}
			}
			return
		}
	fill:
		for len(batch) < s.cfg.BatchSize {
			select {
			case r := <-s.queue:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		start := time.Now()
		s.metrics.passPods.Record(ctx, int64(len(batch)))
		s.scheduleBatch(ctx, batch)
		s.log.Debug("scheduling pass", "pods", len(batch), "took", time.Since(start))
	}
}

// retryLater hands a request back to the loop for its next pass.
func (s *Service) retryLater(rs ...*request) {
	s.retryMu.Lock()
	s.retries = append(s.retries, rs...)
	s.retryMu.Unlock()
	select {
	case s.retryWake <- struct{}{}:
	default:
	}
}

func (s *Service) takeRetries() []*request {
	s.retryMu.Lock()
	defer s.retryMu.Unlock()
	out := s.retries
	s.retries = nil
	return out
}

func (s *Service) drainQueue() []*request {
	var out []*request
	for {
		select {
		case r := <-s.queue:
			out = append(out, r)
		default:
			return out
		}
	}
}

type tentative struct {
	r   *request
	p   placement
	ref *framework.PodRef // the assumed reference in the snapshot (nil for a replay)
	// replay: the pod was found allocated on the host already; the
	// commit confirms that allocation and claims it instead of placing.
	replay bool
}

// scheduleBatch runs one pass: it places every request against the
// snapshot and hands the placements to the hosts' committers.
func (s *Service) scheduleBatch(ctx context.Context, batch []*request) {
	var retry []*request
	byHost := map[string][]tentative{}
	inBatch := map[string]bool{}
	s.mu.Lock()
	if !s.ready {
		s.mu.Unlock()
		for _, r := range batch {
			r.done <- outcome{err: ErrNoInventory}
		}
		return
	}
	for _, r := range batch {
		key := r.alloc.Key()
		if _, gone := s.gone[r.alloc.UID]; gone {
			r.done <- outcome{err: ErrPodGone}
			continue
		}
		if inBatch[key] {
			// The same pod twice in one pass (a retry racing a
			// redelivery): the next pass finds it placed.
			retry = append(retry, r)
			continue
		}
		inBatch[key] = true
		if host, ok := s.allocIndex[key]; ok {
			if r.alloc.Kind != events.AllocationPod {
				r.done <- outcome{placement: s.placementLocked(host, nil), already: true}
				continue
			}
			// A pod's allocation is a placement only once its binding
			// names the host: the writer's claim may still be under way,
			// may have lost (its release to come), or may never have run
			// (a crash, a reply lost while a NATS node restarted). The
			// replay goes through the host's committer, which confirms
			// the reservation and claims before it answers.
			byHost[host] = append(byHost[host], tentative{r: r, p: s.placementLocked(host, nil), replay: true})
			continue
		}
		res, err := s.placeLocked(ctx, r)
		if err != nil {
			var fe *framework.FitError
			if errors.As(err, &fe) {
				r.done <- outcome{fit: fe}
			} else {
				r.done <- outcome{err: err}
			}
			continue
		}
		ref := refOf(r.alloc)
		ref.Assumed = true
		s.snap.AddPod(res.Host.Name, ref)
		byHost[res.Host.Name] = append(byHost[res.Host.Name], tentative{r: r, p: s.placementLocked(res.Host.Name, res.State), ref: ref})
	}
	s.mu.Unlock()
	if len(retry) > 0 {
		s.retryLater(retry...)
	}
	for host, ts := range byHost {
		s.enqueueCommit(ctx, host, ts)
	}
}

// hostCommitter writes one host's reservations. While a write is in
// flight, the reservations of later passes queue up and go out together in
// the next write (a group commit): the loop never waits for the ledger, and
// one host never has two writes of this process racing each other.
type hostCommitter struct {
	mu      sync.Mutex
	queue   []tentative
	running bool
}

func (s *Service) enqueueCommit(ctx context.Context, host string, ts []tentative) {
	s.commitMu.Lock()
	c := s.committers[host]
	if c == nil {
		c = &hostCommitter{}
		s.committers[host] = c
	}
	s.commitMu.Unlock()
	c.mu.Lock()
	c.queue = append(c.queue, ts...)
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start {
		go s.runCommitter(ctx, host, c)
	}
}

func (s *Service) runCommitter(ctx context.Context, host string, c *hostCommitter) {
	var last time.Time
	for {
		if !last.IsZero() {
			// Only after a write of this run: see hostCommitSpacing.
			if wait := hostCommitSpacing - time.Since(last); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
			}
		}
		c.mu.Lock()
		ts := c.queue
		c.queue = nil
		if len(ts) == 0 {
			c.running = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		s.commitSem <- struct{}{}
		last = time.Now()
		again := s.commit(ctx, host, ts)
		<-s.commitSem
		if len(again) > 0 {
			s.retryLater(again...)
		}
	}
}

// placeLocked runs the framework for one request.
func (s *Service) placeLocked(ctx context.Context, r *request) (*framework.Result, error) {
	for _, x := range r.refusals {
		if r.pod.Refused == nil {
			r.pod.Refused = map[string]bool{}
		}
		r.pod.Refused[x.Host] = true
	}
	if r.target == "" {
		return s.fw.Schedule(ctx, r.pod)
	}
	h, ok := s.snap.Host(r.target)
	if !ok {
		return nil, &framework.FitError{Pod: r.pod, Diagnosis: framework.Diagnosis{Hosts: 1,
			Reasons: map[string]int{"HostNotFound": 1}, Messages: map[string]string{"HostNotFound": "host " + r.target + " not in the inventory"}, Unresolvable: true}}
	}
	state := framework.NewCycleState()
	if st := s.fw.RunFilters(ctx, state, r.pod, h); st != nil {
		msg := st.Message
		if st.Reason == "NetworkNotOnHost" {
			msg = fmt.Sprintf("network %s not available on host %s", joinNames(missingNetworks(r.pod, h)), h.Name)
		}
		return nil, &framework.FitError{Pod: r.pod, Diagnosis: framework.Diagnosis{Hosts: 1,
			Reasons: map[string]int{st.Reason: 1}, Messages: map[string]string{st.Reason: msg}, Unresolvable: st.Code == framework.UnschedulableAndUnresolvable}}
	}
	return &framework.Result{Host: h, Evaluated: 1, Feasible: 1, State: state}, nil
}

func missingNetworks(p *framework.PodInfo, h *framework.Host) []string {
	var out []string
	for _, n := range p.Networks {
		if h.Networks[n] == framework.NetworkAbsent {
			out = append(out, n)
		}
	}
	return out
}

func joinNames(names []string) string {
	out := ""
	for i, n := range names {
		if i > 0 {
			out += ", "
		}
		out += n
	}
	return out
}

// placementLocked describes a host as pod.scheduled carries it.
// placementOf is placementLocked for a caller that does not hold s.mu.
func (s *Service) placementOf(host string) placement {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.placementLocked(host, nil)
}

func (s *Service) placementLocked(host string, state *framework.CycleState) placement {
	p := placement{Host: host}
	if h, ok := s.snap.Host(host); ok {
		p.Cluster, p.ResourcePool = h.Cluster, h.ResourcePool
		p.Datastores = locality.OrderDatastores(state, h)
	}
	return p
}

// commit writes one host's reservations and answers the requests; it
// returns those to place again. Pod placements go through the binding
// protocol of package ledger (reserve, then claim) so that a pod is never
// placed on two hosts by two schedulers; a migration's target reservation
// is bound to nothing (the pod stays bound to its source until the
// migration completes).
func (s *Service) commit(ctx context.Context, host string, ts []tentative) []*request {
	s.mu.Lock()
	h, ok := s.snap.Host(host)
	var capacity ledger.Capacity
	if ok {
		capacity = ledger.Capacity{CPUMilli: h.CPUCapacityMilli, MemoryBytes: h.MemoryCapacityBytes, MaxPods: h.MaxPods}
	}
	var hint *ledger.Entry
	if e, ok := s.entries[host]; ok {
		hint = &e
	}
	s.mu.Unlock()

	// Step 0: ask network-config whether the pods' networks are available
	// on this host; a refused pod is placed again without it.
	var again []*request
	refusals := s.checkNetworks(ctx, host, ts)
	kept := ts[:0:0]
	for i, t := range ts {
		ref := refusals[i]
		if ref == nil {
			kept = append(kept, t)
			continue
		}
		s.mu.Lock()
		s.snap.ForgetAssumed(host, t.ref)
		s.mu.Unlock()
		t.r.refusals = append(t.r.refusals, *ref)
		s.log.Info("host refused the pod's network", "pod", t.r.pod.Key, "host", host, "network", ref.Network, "message", ref.Message)
		if t.r.target != "" || len(t.r.refusals) >= maxQueryRefusals {
			t.r.done <- outcome{fit: refusedFit(t.r)}
			continue
		}
		again = append(again, t.r)
	}
	ts = kept
	if len(ts) == 0 {
		return again
	}

	// Step 1: reserve, all of this host's placements in one write.
	allocs := make([]events.Allocation, len(ts))
	now := time.Now().UTC()
	for i, t := range ts {
		allocs[i] = t.r.alloc
		allocs[i].ReservedAt = now
		if t.replay {
			// The cached entry that showed the allocation may be behind
			// a release: confirm it on the entry as stored.
			hint = nil
		}
	}
	res, err := s.ledger.ReserveFrom(ctx, hint, host, capacity, allocs)
	s.mu.Lock()
	for _, t := range ts {
		if t.ref != nil {
			s.snap.ForgetAssumed(host, t.ref)
		}
	}
	if err == nil {
		s.applyEntryLocked(res.Entry)
	}
	s.mu.Unlock()
	if err != nil {
		for _, t := range ts {
			t.r.done <- outcome{err: err}
		}
		return again
	}

	// Step 2: claim the reserved pods' bindings.
	claims := make([]ledger.Binding, len(ts))
	claimErrs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		if _, refused := res.Rejected[t.r.alloc.Key()]; refused || t.r.alloc.Kind != events.AllocationPod {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			claims[i], claimErrs[i] = s.ledger.Claim(ctx, t.r.alloc.UID, host)
		}()
	}
	wg.Wait()

	// A pod live on another host already (another scheduler claimed it
	// first): our reservation here is ours alone and is freed before the
	// request hears where the pod went.
	var release []string
	type answer struct {
		r   *request
		out outcome
	}
	var answers []answer
	for i, t := range ts {
		key := t.r.alloc.Key()
		if _, refused := res.Rejected[key]; refused {
			// Another scheduler took the room since our snapshot was
			// taken: place the pod again against the fresh entry. Running
			// out of attempts means heavy contention, not a full
			// datacenter (the framework says that itself), so the request
			// fails as retryable rather than as unschedulable.
			t.r.attempts++
			if t.r.attempts < maxReserveAttempts {
				again = append(again, t.r)
				continue
			}
			t.r.done <- outcome{err: fmt.Errorf("%w: host %s refused the pod %d times", ErrContention, host, t.r.attempts)}
			continue
		}
		switch {
		case t.r.alloc.Kind != events.AllocationPod:
			t.r.done <- outcome{placement: t.p}
		case claimErrs[i] != nil:
			// Unknown winner: keep the room rather than free an
			// allocation that may be the pod's. The redelivery finds it
			// and claims again (a replay is claimed before it is
			// answered); the sweep frees it if the pod went elsewhere.
			t.r.done <- outcome{err: claimErrs[i]}
		case claims[i].Host != host:
			s.log.Info("pod bound to another host already; releasing this reservation", "pod", t.r.pod.Key, "host", host, "bound", claims[i].Host, "replay", t.replay)
			release = append(release, key)
			answers = append(answers, answer{t.r, outcome{placement: s.placementOf(claims[i].Host), already: true}})
		default:
			if claims[i].TookOver != "" {
				s.log.Info("pod binding taken over from a host that no longer holds it", "pod", t.r.pod.Key, "host", host, "from", claims[i].TookOver)
			}
			t.r.done <- outcome{placement: t.p, already: t.replay}
		}
	}
	if len(release) > 0 {
		// Left in place, the pod would hold room on two hosts, and its
		// deletion frees only the host its binding names: the release is
		// tried again across a moment without the store (a NATS node
		// restarting). The answers cannot fail instead: a redelivery would
		// find the pod in the allocation index, possibly on this host.
		rerr := bus.Retry(ctx, releaseAttempts, releaseBackoff, func(ctx context.Context) error {
			return s.release(ctx, map[string][]string{host: release})
		})
		if rerr != nil {
			s.log.Warn("release after a lost claim", "host", host, "err", rerr)
		}
	}
	for _, a := range answers {
		a.r.done <- a.out
	}
	return again
}

// releaseAttempts and releaseBackoff bound how long a lost claim's release
// is retried: past a NATS leader election (a few seconds), not forever.
var (
	releaseAttempts = 6
	releaseBackoff  = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
)

// refusedFit is the answer to a request whose candidates kept refusing
// its networks (or whose named target did).
func refusedFit(r *request) *framework.FitError {
	last := r.refusals[len(r.refusals)-1]
	return &framework.FitError{Pod: r.pod, Diagnosis: framework.Diagnosis{
		Hosts:    len(r.refusals),
		Reasons:  map[string]int{"NetworkRefused": len(r.refusals)},
		Messages: map[string]string{"NetworkRefused": "network not available (" + last.String() + ")"},
	}}
}

// submitMigration asks the scheduling loop for a host for migration id of
// p (a pod or a VM): any host but its source, or target when one is named.
func (s *Service) submitMigration(ctx context.Context, p *framework.PodInfo, source, id, target string) outcome {
	p.Exclude = map[string]bool{source: true}
	alloc := allocationOf(p)
	alloc.Kind, alloc.MigrationID = events.AllocationMigration, id
	r := newRequest(p, alloc)
	r.target = target
	return s.submit(ctx, r)
}

// allocationOf is the ledger allocation of a pod.
func allocationOf(p *framework.PodInfo) events.Allocation {
	return events.Allocation{Kind: events.AllocationPod, Namespace: p.Namespace, Name: p.Name, UID: p.UID,
		CPUMilli: p.CPUMilli, MemoryBytes: p.MemoryBytes, Labels: p.Labels, VM: p.VM}
}
