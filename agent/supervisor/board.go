package supervisor

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Board holds the pod's reported state. Every change wakes whoever waits
// on the channel Snapshot returned, so each channel session can send the
// change as a partial status.
type Board struct {
	mu      sync.Mutex
	status  guestchannel.Status // Seq unused here
	index   map[string]*guestchannel.ContainerStatus
	changed chan struct{}
	seq     atomic.Uint64
	policy  string
	// stopped: the pod's stop is done and its phase final (Stopped).
	stopped bool
	// evicted, when set, is why the agent evicted the pod (Evict): its
	// final phase is Failed with reason Evicted, whatever its containers
	// ended with.
	evicted string
}

// Evict marks the pod evicted for the reason message: the stop that
// follows ends it Failed, reason Evicted. The first reason stays.
func (b *Board) Evict(message string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.evicted == "" && !b.stopped {
		b.evicted = message
	}
}

// NewBoard starts a pod's state: Pending, every container waiting.
func NewBoard(spec *guestchannel.PodSpec) *Board {
	b := &Board{index: map[string]*guestchannel.ContainerStatus{}, changed: make(chan struct{}), policy: spec.RestartPolicy}
	b.status.Phase = guestchannel.PhasePending
	mk := func(cs []guestchannel.Container, reason string) []guestchannel.ContainerStatus {
		out := make([]guestchannel.ContainerStatus, len(cs))
		for i, c := range cs {
			out[i] = guestchannel.ContainerStatus{Name: c.Name, State: guestchannel.ContainerState{Kind: guestchannel.StateWaiting, Reason: reason}}
		}
		return out
	}
	b.status.InitContainers = mk(spec.InitContainers, "PodInitializing")
	reason := "ContainerCreating"
	if len(spec.InitContainers) > 0 {
		reason = "PodInitializing"
	}
	b.status.Containers = mk(spec.Containers, reason)
	for i, c := range spec.Containers {
		if c.Completed != nil {
			// Terminated for good in an earlier boot: so from the first
			// report on, and never started in this one (Pod.Run).
			b.status.Containers[i].State = *c.Completed
		}
	}
	for i := range b.status.InitContainers {
		b.index[b.status.InitContainers[i].Name] = &b.status.InitContainers[i]
	}
	for i := range b.status.Containers {
		b.index[b.status.Containers[i].Name] = &b.status.Containers[i]
	}
	return b
}

// Snapshot returns a deep copy of the state and a channel closed at the next
// change.
func (b *Board) Snapshot() (guestchannel.Status, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.status
	s.InitContainers = copyStatuses(s.InitContainers)
	s.Containers = copyStatuses(s.Containers)
	return s, b.changed
}

// Container returns a copy of container name's status; false for a name
// the pod does not have.
func (b *Board) Container(name string) (guestchannel.ContainerStatus, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cs := b.index[name]
	if cs == nil {
		return guestchannel.ContainerStatus{}, false
	}
	return copyStatuses([]guestchannel.ContainerStatus{*cs})[0], true
}

// NextSeq numbers a status report (increasing across connections of one
// boot).
func (b *Board) NextSeq() uint64 { return b.seq.Add(1) }

func copyStatuses(in []guestchannel.ContainerStatus) []guestchannel.ContainerStatus {
	if in == nil {
		return nil
	}
	out := make([]guestchannel.ContainerStatus, len(in))
	for i, c := range in {
		out[i] = c
		if c.LastState != nil {
			ls := *c.LastState
			out[i].LastState = &ls
		}
	}
	return out
}

// SetPending reports a Pending phase the agent cannot leave (a disk that
// does not mount, a missing runtime).
func (b *Board) SetPending(reason, message string) {
	b.setPhase(guestchannel.PhasePending, reason, message)
}

// update changes container name's status and recomputes the phase.
func (b *Board) update(name string, fn func(*guestchannel.ContainerStatus)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cs := b.index[name]; cs != nil {
		fn(cs)
	}
	b.derivePhase()
	b.wake()
}

// derivePhase sets the phase from the containers, in the same change as
// the container states it follows from; b.mu held. Stopping and a Pending
// with a reason (the pod could not start) stay until changed explicitly.
func (b *Board) derivePhase() {
	st := &b.status
	if b.stopped || st.Phase == guestchannel.PhaseStopping || (st.Phase == guestchannel.PhasePending && st.Reason != "") {
		return
	}
	for _, ic := range st.InitContainers {
		if ic.State.Kind == guestchannel.StateTerminated && ic.State.ExitCode != 0 && b.policy == "Never" {
			st.Phase, st.Reason, st.Message = guestchannel.PhaseFailed, "InitContainerFailed",
				fmt.Sprintf("init container %s exited %d", ic.Name, ic.State.ExitCode)
			return
		}
	}
	allStarted, allDone, failed := true, true, false
	for _, cs := range st.Containers {
		switch cs.State.Kind {
		case guestchannel.StateWaiting:
			if cs.LastState == nil {
				allStarted = false
			}
			allDone = false
		case guestchannel.StateRunning:
			allDone = false
		case guestchannel.StateTerminated:
			ex := cs.State.ExitCode
			if ex != 0 {
				failed = true
			}
			// Terminated for good only when the policy will not restart it.
			if !guestchannel.TerminatedForGood(b.policy, ex) {
				allDone = false
			}
		}
	}
	st.Reason, st.Message = "", ""
	switch {
	case allDone && failed:
		st.Phase = guestchannel.PhaseFailed
	case allDone:
		st.Phase = guestchannel.PhaseSucceeded
	case allStarted:
		st.Phase = guestchannel.PhaseRunning
	default:
		st.Phase = guestchannel.PhasePending
	}
}

// setPhase sets the pod's phase with a reason (empty to clear).
func (b *Board) setPhase(phase, reason, message string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped || (b.status.Phase == phase && b.status.Reason == reason && b.status.Message == message) {
		return
	}
	b.status.Phase, b.status.Reason, b.status.Message = phase, reason, message
	b.wake()
}

// Stopped ends the pod's phase once a stop is done, when no container runs
// and none will: Succeeded if every container terminated with exit code 0,
// else Failed (one was killed, or never ran), as Kubernetes ends a deleted
// pod. The phase stays: the host takes it as the stop's outcome, so that a
// pod whose containers were waiting (in back-off, or never started) is not
// held for its whole grace period, its report showing nothing more to
// stop than Stopping did.
func (b *Board) Stopped() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	b.stopped = true
	st := &b.status
	if b.evicted != "" {
		st.Phase, st.Reason, st.Message = guestchannel.PhaseFailed, guestchannel.ReasonEvicted, b.evicted
		b.wake()
		return
	}
	st.Phase, st.Reason, st.Message = guestchannel.PhaseSucceeded, "", ""
	for _, cs := range append(append([]guestchannel.ContainerStatus(nil), st.InitContainers...), st.Containers...) {
		if cs.State.Kind != guestchannel.StateTerminated || cs.State.ExitCode != 0 {
			st.Phase = guestchannel.PhaseFailed
			break
		}
	}
	b.wake()
}

func (b *Board) wake() {
	close(b.changed)
	b.changed = make(chan struct{})
}
