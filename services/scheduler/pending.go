package scheduler

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Unschedulable pods wait here, in memory, for a retry. The pod.accepted
// event that brought one is acknowledged once pod.unschedulable is out (the
// reason is on the pod's record, where a person looks); a restarted
// scheduler finds the waiting pods again in the provisioner's records (phase
// Pending, no host), and every replica rescans those records periodically
// for pods marked Unschedulable that it does not hold, so that the pods a
// dead replica held are not stranded. Retries back off exponentially, and every change that
// can free room or open a host (a pod deleted, a host recovered or
// uncordoned, a network realized, a ledger entry shrinking) retries every
// waiting pod at once.

// pendingPod is one waiting pod.
type pendingPod struct {
	pod   *framework.PodInfo
	cause event.Event
	// message is the last pod.unschedulable message published, so that a
	// retry failing for the same reason publishes nothing new.
	message  string
	backoff  time.Duration
	next     time.Time
	inFlight bool
}

type pendingSet struct {
	initial, max time.Duration

	mu   sync.Mutex
	pods map[string]*pendingPod // by pod key
	wake chan struct{}
}

func newPendingSet(initial, max time.Duration) *pendingSet {
	return &pendingSet{initial: initial, max: max, pods: map[string]*pendingPod{}, wake: make(chan struct{}, 1)}
}

// add (or update) a waiting pod; its next try is after the backoff.
func (p *pendingSet) add(pod *framework.PodInfo, cause event.Event, message string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[pod.Key]
	if !ok || e.pod.UID != pod.UID {
		e = &pendingPod{pod: pod, cause: cause, backoff: p.initial}
		p.pods[pod.Key] = e
	}
	e.message = message
	e.next = time.Now().Add(e.backoff)
}

// failed records another failed try and doubles the backoff.
func (p *pendingSet) failed(key string, message string) (changed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key]
	if !ok {
		return false
	}
	e.inFlight = false
	e.backoff = min(2*e.backoff, p.max)
	e.next = time.Now().Add(e.backoff)
	changed = e.message != message
	e.message = message
	return changed
}

// remove drops a pod (placed, deleted or failed); uid "" matches any.
func (p *pendingSet) remove(key, uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.pods[key]; ok && (uid == "" || e.pod.UID == uid) {
		delete(p.pods, key)
	}
}

// has reports whether the pod (by key and uid) is waiting here.
func (p *pendingSet) has(key, uid string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.pods[key]
	return ok && e.pod.UID == uid
}

// rescanLoop takes up, every interval, the unschedulable pods recorded in
// KV `pods` that this replica does not hold: a replica that died held its
// waiting pods only in memory.
func (s *Service) rescanLoop(ctx context.Context, every time.Duration) {
	periodic.Every(ctx, every, s.log, "ledger sweep", func(ctx context.Context) error {
		if err := s.recoverPending(ctx, false); err != nil && ctx.Err() == nil {
			s.log.Warn("rescan pending pods", "err", err)
		}
		return s.sweepLedger(ctx, every*2)
	})
}

// len is the number of waiting pods.
func (p *pendingSet) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pods)
}

// kickAll makes every waiting pod due now.
func (p *pendingSet) kickAll() {
	p.mu.Lock()
	now := time.Now()
	for _, e := range p.pods {
		e.next = now
		// A kick is a new chance, not another failure: start the backoff
		// over so that the pod is not left waiting a minute after the
		// next change.
		e.backoff = p.initial
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// due returns the pods whose next try has come and marks them in flight.
func (p *pendingSet) due() []*pendingPod {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var out []*pendingPod
	for _, e := range p.pods {
		if !e.inFlight && !e.next.After(now) {
			e.inFlight = true
			out = append(out, e)
		}
	}
	return out
}

// retryLoop tries due pods again.
func (s *Service) retryLoop(ctx context.Context) {
	periodic.EveryOrWake(ctx, 200*time.Millisecond, s.pending.wake, s.log, "retry pending pods", func(ctx context.Context) error {
		for _, e := range s.pending.due() {
			go s.retry(ctx, e)
		}
		return nil
	})
}

func (s *Service) retry(ctx context.Context, e *pendingPod) {
	o := s.submit(ctx, newRequest(e.pod, allocationOf(e.pod)))
	switch {
	case o.err != nil:
		if errors.Is(o.err, ErrPodGone) {
			s.pending.remove(e.pod.Key, e.pod.UID)
			return
		}
		s.pending.failed(e.pod.Key, e.message)
	case o.fit != nil:
		msg := o.fit.Error()
		if s.pending.failed(e.pod.Key, msg) {
			if err := s.publishUnschedulable(ctx, e.cause, e.pod, o.fit); err != nil {
				s.log.Warn("publish pod.unschedulable", "pod", e.pod.Key, "err", err)
			}
		}
	default:
		if err := s.publishScheduled(ctx, e.cause, e.pod, o.placement, o.refusals); err != nil {
			// The reservation stands; the next try republishes it.
			s.log.Warn("publish pod.scheduled", "pod", e.pod.Key, "err", err)
			s.pending.failed(e.pod.Key, e.message)
			return
		}
		s.pending.remove(e.pod.Key, e.pod.UID)
		s.log.Info("pending pod placed", "pod", e.pod.Key, "host", o.placement.Host)
	}
}
