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

// reserveParallelism bounds concurrent ledger writes of a pass.
const reserveParallelism = 32

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
	done     chan outcome
}

func newRequest(pod *framework.PodInfo, alloc events.Allocation) *request {
	return &request{pod: pod, alloc: alloc, done: make(chan outcome, 1)}
}

// submit queues a request and waits for its outcome.
func (s *Service) submit(ctx context.Context, r *request) outcome {
	select {
	case s.queue <- r:
	case <-ctx.Done():
		return outcome{err: ctx.Err()}
	}
	select {
	case o := <-r.done:
		return o
	case <-ctx.Done():
		return outcome{err: ctx.Err()}
	}
}

func (s *Service) scheduleLoop(ctx context.Context) {
	var retry []*request
	for {
		var batch []*request
		batch = append(batch, retry...)
		retry = nil
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case r := <-s.queue:
				batch = append(batch, r)
			}
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
		retry = s.scheduleBatch(ctx, batch)
		if ctx.Err() != nil {
			for _, r := range append(retry, s.drainQueue()...) {
				r.done <- outcome{err: ErrStopped}
			}
			return
		}
	}
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
	ref *framework.PodRef // the assumed reference in the snapshot
}

// scheduleBatch runs one pass and returns the requests to place again.
func (s *Service) scheduleBatch(ctx context.Context, batch []*request) []*request {
	var retry []*request
	byHost := map[string][]tentative{}
	inBatch := map[string]bool{}
	s.mu.Lock()
	if !s.ready {
		s.mu.Unlock()
		for _, r := range batch {
			r.done <- outcome{err: ErrNoInventory}
		}
		return nil
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
			r.done <- outcome{placement: s.placementLocked(host, nil), already: true}
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
		byHost[res.Host.Name] = append(byHost[res.Host.Name], tentative{r, s.placementLocked(res.Host.Name, res.State), ref})
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	var retryMu sync.Mutex
	sem := make(chan struct{}, reserveParallelism)
	for host, ts := range byHost {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			again := s.commit(ctx, host, ts)
			retryMu.Lock()
			retry = append(retry, again...)
			retryMu.Unlock()
		}()
	}
	wg.Wait()
	return retry
}

// placeLocked runs the framework for one request.
func (s *Service) placeLocked(ctx context.Context, r *request) (*framework.Result, error) {
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
func (s *Service) placementLocked(host string, state *framework.CycleState) placement {
	p := placement{Host: host}
	if h, ok := s.snap.Host(host); ok {
		p.Cluster, p.ResourcePool = h.Cluster, h.ResourcePool
		p.Datastores = locality.OrderDatastores(state, h)
	}
	return p
}

// commit writes one host's reservations of a pass and answers the
// requests; it returns those to place again.
func (s *Service) commit(ctx context.Context, host string, ts []tentative) []*request {
	s.mu.Lock()
	h, ok := s.snap.Host(host)
	var capacity ledger.Capacity
	if ok {
		capacity = ledger.Capacity{CPUMilli: h.CPUCapacityMilli, MemoryBytes: h.MemoryCapacityBytes, MaxPods: h.MaxPods}
	}
	s.mu.Unlock()
	allocs := make([]events.Allocation, len(ts))
	now := time.Now().UTC()
	for i, t := range ts {
		allocs[i] = t.r.alloc
		allocs[i].ReservedAt = now
	}
	res, err := s.ledger.Reserve(ctx, host, capacity, allocs)

	s.mu.Lock()
	for _, t := range ts {
		s.snap.ForgetAssumed(host, t.ref)
	}
	if err == nil {
		s.applyEntryLocked(res.Entry)
	}
	s.mu.Unlock()

	var again []*request
	for _, t := range ts {
		key := t.r.alloc.Key()
		if err != nil {
			t.r.done <- outcome{err: err}
			continue
		}
		if rej, refused := res.Rejected[key]; refused {
			t.r.attempts++
			if t.r.attempts < maxReserveAttempts {
				again = append(again, t.r)
				continue
			}
			t.r.done <- outcome{fit: &framework.FitError{Pod: t.r.pod, Diagnosis: framework.Diagnosis{Hosts: 1,
				Reasons: map[string]int{rej.Reason: 1}, Messages: map[string]string{rej.Reason: rej.Message}}}}
			continue
		}
		t.r.done <- outcome{placement: t.p}
	}
	return again
}

// allocationOf is the ledger allocation of a pod.
func allocationOf(p *framework.PodInfo) events.Allocation {
	return events.Allocation{Kind: events.AllocationPod, Namespace: p.Namespace, Name: p.Name, UID: p.UID,
		CPUMilli: p.CPUMilli, MemoryBytes: p.MemoryBytes, Labels: p.Labels}
}
