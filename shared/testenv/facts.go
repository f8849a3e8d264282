package testenv

import (
	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
)

// Facts that services' tests read from the recorder: the scheduler's word
// on a pod or a migration, as every other service hears it.

// Decision is the pod's latest pod.scheduled, and the pod.unschedulable
// recorded since (nil when the latest word is a placement).
func (e *Env) Decision(key string) (s *events.PodScheduled, u *events.PodUnschedulable) {
	for _, seen := range e.Events.Seen() {
		switch p := seen.Payload.(type) {
		case *events.PodScheduled:
			if p.ObjectKey() == key {
				s, u = p, nil
			}
		case *events.PodUnschedulable:
			if p.ObjectKey() == key {
				u = p
			}
		}
	}
	return s, u
}

// Decided counts the pods of keys that have a decision either way.
func (e *Env) Decided(keys []string) int {
	n := 0
	for _, k := range keys {
		if s, u := e.Decision(k); s != nil || u != nil {
			n++
		}
	}
	return n
}

// Scheduled is the pod's latest pod.scheduled (nil: none).
func (e *Env) Scheduled(key string) *events.PodScheduled { s, _ := e.Decision(key); return s }

// Unschedulable is the pod.unschedulable since the pod's latest placement
// (nil: none).
func (e *Env) Unschedulable(key string) *events.PodUnschedulable {
	_, u := e.Decision(key)
	return u
}

// ScheduledAll is every pod.scheduled of the pod, in order.
func (e *Env) ScheduledAll(key string) []*events.PodScheduled {
	return All(e, func(p *events.PodScheduled) bool { return p.ObjectKey() == key })
}

// MigrationAnswer is the latest migration.target.reserved or
// migration.rejected of migration id.
func (e *Env) MigrationAnswer(id string) (ev event.Event, ok bool) {
	for _, seen := range e.Events.Seen() {
		switch p := seen.Payload.(type) {
		case *events.MigrationTargetReserved:
			if p.ID == id {
				ev, ok = seen.Event, true
			}
		case *events.MigrationRejected:
			if p.ID == id {
				ev, ok = seen.Event, true
			}
		}
	}
	return ev, ok
}
