package migration

import (
	"fmt"
	"slices"
)

// Limits bound how many migrations run at once. vMotion saturates the
// source host's vMotion network and memory bandwidth, and a cluster's
// network is shared by all its hosts, so both are bounded: a migration
// counts against its source host, its source cluster and, when it crosses
// clusters, the target cluster too.
type Limits struct {
	// PerSourceHost bounds the migrations leaving one host.
	PerSourceHost int
	// PerCluster bounds the migrations touching one cluster.
	PerCluster int
}

// slot is one migration as the limiter sees it.
type slot struct {
	id            string
	sourceHost    string
	sourceCluster string
	targetCluster string
	// vm marks a native VM's move: it is admitted here like a pod's
	// migration, but the native VM controller runs it (vmmoves.go).
	vm bool
}

func (s slot) clusters() []string {
	if s.targetCluster == "" || s.targetCluster == s.sourceCluster {
		return []string{s.sourceCluster}
	}
	return []string{s.sourceCluster, s.targetCluster}
}

// limiter is the admission queue: migrations wait in arrival order and
// start as soon as their host and clusters have room. A migration whose
// source host is full does not hold back one from another host (no
// head-of-line blocking), but among migrations competing for the same room
// the earliest starts first. It is not safe for concurrent use; the service
// guards it with its mutex.
type limiter struct {
	limits    Limits
	queue     []slot
	running   map[string]slot
	byHost    map[string]int
	byCluster map[string]int
}

func newLimiter(l Limits) *limiter {
	return &limiter{limits: l, running: map[string]slot{}, byHost: map[string]int{}, byCluster: map[string]int{}}
}

// enqueue adds a migration at the back of the queue (no-op if it is queued
// or running already).
func (l *limiter) enqueue(s slot) {
	if _, ok := l.running[s.id]; ok {
		return
	}
	for _, q := range l.queue {
		if q.id == s.id {
			return
		}
	}
	l.queue = append(l.queue, s)
}

// has reports whether the migration is queued or running.
func (l *limiter) has(id string) bool {
	if _, ok := l.running[id]; ok {
		return true
	}
	return slices.ContainsFunc(l.queue, func(q slot) bool { return q.id == id })
}

// remove takes a migration out of the queue; it reports whether it was
// queued (false if unknown or already running).
func (l *limiter) remove(id string) bool {
	for i, q := range l.queue {
		if q.id == id {
			l.queue = append(l.queue[:i], l.queue[i+1:]...)
			return true
		}
	}
	return false
}

// fits reports whether s may start now, and if not, why.
func (l *limiter) fits(s slot) (bool, string) {
	if l.limits.PerSourceHost > 0 && l.byHost[s.sourceHost] >= l.limits.PerSourceHost {
		return false, fmt.Sprintf("%d migrations already leave %s (limit %d per source host)", l.byHost[s.sourceHost], s.sourceHost, l.limits.PerSourceHost)
	}
	for _, c := range s.clusters() {
		if l.limits.PerCluster > 0 && l.byCluster[c] >= l.limits.PerCluster {
			return false, fmt.Sprintf("%d migrations already touch %s (limit %d per cluster)", l.byCluster[c], c, l.limits.PerCluster)
		}
	}
	return true, ""
}

// next starts every queued migration that fits, in queue order, and
// returns them.
func (l *limiter) next() []slot {
	var started []slot
	kept := l.queue[:0]
	for _, q := range l.queue {
		if ok, _ := l.fits(q); ok {
			l.start(q)
			started = append(started, q)
			continue
		}
		kept = append(kept, q)
	}
	l.queue = kept
	return started
}

func (l *limiter) start(s slot) {
	l.running[s.id] = s
	l.byHost[s.sourceHost]++
	for _, c := range s.clusters() {
		l.byCluster[c]++
	}
}

// done frees a running migration's room.
func (l *limiter) done(id string) {
	s, ok := l.running[id]
	if !ok {
		return
	}
	delete(l.running, id)
	l.byHost[s.sourceHost]--
	for _, c := range s.clusters() {
		l.byCluster[c]--
	}
}

// waiting describes every queued migration: how many are ahead of it in
// the queue and what it waits for.
func (l *limiter) waiting() map[string]queued {
	out := make(map[string]queued, len(l.queue))
	for i, q := range l.queue {
		_, why := l.fits(q)
		out[q.id] = queued{position: i, why: why}
	}
	return out
}

type queued struct {
	position int
	why      string
}
