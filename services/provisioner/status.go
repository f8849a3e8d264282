package provisioner

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Reasons of the guest-driven part of a pod's life.
const (
	// ReasonGuestSilent: the pod VM is on but its guest never reported
	// (VMReady False, and the pod's reason while it waits for repair).
	ReasonGuestSilent = "GuestSilent"
	// ReasonContainersFailed: every container terminated for good and at
	// least one failed (or an init container failed with no restart).
	ReasonContainersFailed = "ContainersFailed"
	// ReasonPodCompleted and ReasonPodFailed: the condition reasons once
	// every container has terminated for good, as the kubelet's: the pod
	// succeeded, or failed (an init container's failure included).
	ReasonPodCompleted = "PodCompleted"
	ReasonPodFailed    = "PodFailed"
	// ReasonContainersNotReady, ReasonContainersNotInitialized: as in
	// Kubernetes.
	ReasonContainersNotReady       = "ContainersNotReady"
	ReasonContainersNotInitialized = "ContainersNotInitialized"
	// ReasonReported: a condition set from the guest's report.
	ReasonReported = "Reported"
)

// containersReported handles pod.containers.reported: the guest's view of
// the pod's containers, folded into the record by compare-and-set. A
// report is ignored when it is stale: about another pod of the name,
// another VM than the pod's current one, or an older report of the same
// boot (BootID equal, Seq not higher). When the fold moves the pod to
// Running, pod.running is announced before the record is saved (a crash in
// between re-announces under the same id).
func (h handling) containersReported(ctx context.Context, p *events.PodContainersReported) error {
	s := h.s
	if p.Namespace == events.TemplateNamespace {
		return s.templateReported(ctx, p)
	}
	key := events.PodRecordKey(p.Namespace, p.Name)
	for range maxCASAttempts {
		r, err := s.recs.get(ctx, key)
		if err != nil || r == nil || r.UID != p.UID {
			return err
		}
		if why := staleReport(r, p, h.ev.Time()); why != "" {
			h.log.Info("container report ignored", "why", why, "vm", p.VM, "bootID", p.BootID, "seq", p.Seq)
			return h.finishDelete(ctx, r)
		}
		s.foldReport(r, p, h.ev.Time())
		if err := s.settle(ctx, r); err != nil {
			return err
		}
		err = s.save(ctx, r)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return err
		}
		return h.finishDelete(ctx, r)
	}
	return fmt.Errorf("record %s: %w %d times in a row", key, errConflict, maxCASAttempts)
}

// finishDelete powers off and removes a pod being deleted as soon as the
// guest's report shows its containers stopped, rather than when the
// delete's retry comes round.
func (h handling) finishDelete(ctx context.Context, r *events.PodRecord) error {
	if r.DeletionRequestedAt.IsZero() || h.s.stopWait(r) > 0 {
		return nil
	}
	return h.s.reconcileOutcome(ctx, r, false)
}

// staleReport says why a report must not be folded into r, or "".
func staleReport(r *events.PodRecord, p *events.PodContainersReported, published time.Time) string {
	switch {
	case r.Phase == events.PodPhaseFailed && r.VMRef == "":
		return "the pod failed and has no VM"
	case p.VM != r.VMName:
		return fmt.Sprintf("from VM %s, not the pod's current VM %s", p.VM, r.VMName)
	case r.Guest == nil && r.GuestBefore != nil && r.GuestBefore.Gone && p.BootID == r.GuestBefore.Report.BootID:
		// That boot's VM is gone (lost, removed, or left on an unreachable
		// host): a late report of it (whose VM name the next VM may have)
		// says nothing of the pod's next VM, made or not yet.
		return fmt.Sprintf("boot %s is of a VM the pod no longer has", p.BootID)
	}
	last := r.Guest
	if last == nil && r.GuestBefore != nil {
		last = &r.GuestBefore.Report
	}
	switch {
	case last == nil:
	case last.BootID == p.BootID && p.Seq <= last.Seq:
		return fmt.Sprintf("seq %d of boot %s already folded (last %d)", p.Seq, p.BootID, last.Seq)
	case last.BootID != p.BootID && !published.IsZero() && published.Before(last.Time):
		// A VM's boots follow one another: a report of another boot
		// published before the last one folded is an older boot's, late
		// (redelivered, or folded by another replica after a newer one).
		return fmt.Sprintf("boot %s's report was published before the last one of boot %s", p.BootID, last.BootID)
	}
	return ""
}

// foldReport copies the report's statuses into the record (in memory) and
// sets the conditions derived from them. The phase is settle's.
func (s *Service) foldReport(r *events.PodRecord, p *events.PodContainersReported, published time.Time) {
	now := s.now().UTC()
	switch {
	case r.Guest != nil && r.Guest.BootID != p.BootID:
		carryOver(r, now, p.ContainerStatuses, r.InitContainerStatuses, r.ContainerStatuses)
	case r.Guest == nil && r.GuestBefore != nil && r.GuestBefore.Report.BootID != p.BootID:
		carryOver(r, now, p.ContainerStatuses, r.GuestBefore.InitContainerStatuses, r.GuestBefore.ContainerStatuses)
	}
	r.GuestBefore = nil
	r.Guest = &events.GuestReport{VM: p.VM, BootID: p.BootID, Seq: p.Seq, Phase: p.Phase, Reason: p.Reason, Message: p.Message,
		At: now, Time: published.UTC()}
	r.InitContainerStatuses = withCarried(p.InitContainerStatuses, r.ContainersBefore)
	r.ContainerStatuses = withCarried(p.ContainerStatuses, r.ContainersBefore)
	r.GuestRepairs = 0
	if c, ok := r.Condition(events.PodConditionVMReady); ok && c.Status != events.ConditionTrue {
		r.SetCondition(events.PodConditionVMReady, events.ConditionTrue, "GuestReported", "the guest of pod VM "+r.VMName+" reports", now)
	}
	if r.Reason == ReasonGuestSilent {
		r.Reason, r.Message = "", ""
	}
	if r.Phase == events.PodPhaseStarting {
		// An encrypted ephemeral disk waiting for its key says so on the
		// pod, and only while it waits.
		switch {
		case p.Reason == guestchannel.ReasonWaitingForKey:
			r.Reason, r.Message = p.Reason, p.Message
		case r.Reason == guestchannel.ReasonWaitingForKey:
			r.Reason, r.Message = events.ReasonContainerCreating, "the encrypted ephemeral disk is open; the containers are starting"
		}
		// A container that cannot start says why on the pod, as
		// kubectl's STATUS column does, and only while it cannot: the
		// pod does not go on claiming its containers are being created.
		// Nor while its init containers run (kubectl's Init:N/M), and
		// no longer that it waits for its guest's report: one came.
		if r.Reason != guestchannel.ReasonWaitingForKey {
			if reason, msg := startTrouble(r); reason != "" {
				r.Reason, r.Message = reason, msg
			} else if msg := initProgress(r); msg != "" {
				r.Reason, r.Message = reasonPodInitializing, msg
			} else {
				r.Reason, r.Message = events.ReasonContainerCreating, "the guest is starting the containers"
			}
		}
	}

	initialized, initWhy := initialized(r)
	setReported(r, events.PodConditionInitialized, initialized, ReasonContainersNotInitialized, initWhy, now)
	ready, readyWhy := containersReady(r)
	if phase, done := finished(r); done {
		ready, readyWhy = false, ReasonPodCompleted
		if phase == events.PodPhaseFailed {
			readyWhy = ReasonPodFailed
		}
	}
	setReported(r, events.PodConditionContainersReady, ready, ReasonContainersNotReady, readyWhy, now)
	setReported(r, events.PodConditionReady, ready, ReasonContainersNotReady, readyWhy, now)
}

// reasonGuestRestarted is the lastState of a container that was running
// when its guest stopped (Kubernetes says Unknown, exit code 255, for a
// container a node's reboot ended). Its finishedAt is when the next boot
// was first heard of (the earliest start it reports, or the fold of its
// first report): the end is known to lie before it, as a container
// runtime dates a task it finds dead when it starts again.
const reasonGuestRestarted = "Unknown"

// carryOver adds to r.ContainersBefore what a boot's last folded statuses
// (which already hold what earlier boots carried) leave to the next boot,
// whose first report is next: a container that started in that boot
// counts the next boot's start as a restart, and one that was running when
// its guest stopped ended unknown. Whether it started is the guest's word,
// not the folded count: running or terminated, or waiting with a restart
// or a last state of the guest's own (back-off after its first crash). A
// container that never started in that boot keeps what it had. One that
// had terminated for good and that the next guest did not run again (it
// reports it with that very terminated state and no restart: the pod VM's
// spec said so, completedContainers) keeps its count and last state: its
// status folds to what it was.
func carryOver(r *events.PodRecord, now time.Time, next []corev1.ContainerStatus, lists ...[]corev1.ContainerStatus) {
	before := r.ContainersBefore
	out := maps.Clone(before)
	nextOf := statusesByName(next)  // containers only: init containers run again in every boot
	boot := slices.Concat(lists...) // that boot's statuses
	was := statusesByName(boot)
	// The next boot's first start: of the containers it ran (one not run
	// again reports its old boot's state, and times).
	ended := metav1.NewTime(now)
	for _, n := range next {
		if started := startedAt(n.State); started != nil && !started.IsZero() && started.Before(&ended) && !notRunAgain(was[n.Name], n) {
			ended = *started
		}
	}
	for _, cs := range boot {
		prev := before[cs.Name]
		c := events.CarriedContainer{Restarts: cs.RestartCount + 1, LastState: cs.LastTerminationState}
		switch n := nextOf[cs.Name]; {
		case notRunAgain(cs, n):
			c.Restarts = cs.RestartCount
		case cs.State.Running != nil:
			finished := ended
			if finished.Before(&cs.State.Running.StartedAt) {
				finished = metav1.NewTime(now) // clocks apart: never an end before the start
			}
			c.LastState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 255, Reason: reasonGuestRestarted, Message: "the pod VM's guest stopped while the container ran",
				StartedAt: cs.State.Running.StartedAt, FinishedAt: finished,
			}}
		case cs.State.Terminated != nil:
			c.LastState = corev1.ContainerState{Terminated: cs.State.Terminated}
		case cs.RestartCount == prev.Restarts && equality.Semantic.DeepEqual(cs.LastTerminationState, prev.LastState):
			continue // never started in that boot
		}
		if out == nil {
			out = map[string]events.CarriedContainer{}
		}
		out[cs.Name] = c
	}
	r.ContainersBefore = out
}

// completedContainers are the containers (not init containers: those run
// again in a new pod VM) that terminated for good by the last folded
// statuses, the current guest's or, before the next guest reports, those
// of the VM replaced (restartPolicy Never: any exit; OnFailure: exit 0),
// with their terminated state in the guest's shape. A pod VM made after
// that boot is told not to run them again (guestchannel's
// Container.Completed), as the kubelet does not when it re-creates a
// pod's sandbox: a batch step's work is not done twice.
func completedContainers(r *events.PodRecord) map[string]*guestchannel.ContainerState {
	statuses := r.ContainerStatuses
	if r.Guest == nil && r.GuestBefore != nil {
		statuses = r.GuestBefore.ContainerStatuses
	}
	at := func(m metav1.Time) *time.Time {
		if m.IsZero() {
			return nil
		}
		u := m.UTC()
		return &u
	}
	out := map[string]*guestchannel.ContainerState{}
	for _, cs := range statuses {
		t := cs.State.Terminated
		if t == nil || !guestchannel.TerminatedForGood(string(r.Pod.Spec.RestartPolicy), t.ExitCode) {
			continue
		}
		out[cs.Name] = &guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: t.Reason, Message: t.Message,
			ExitCode: t.ExitCode, Signal: t.Signal, StartedAt: at(t.StartedAt), FinishedAt: at(t.FinishedAt)}
	}
	return out
}

// withCarried is the guest's statuses with what earlier boots carried
// added: their restarts, and their last state until the guest has one.
func withCarried(statuses []corev1.ContainerStatus, carried map[string]events.CarriedContainer) []corev1.ContainerStatus {
	if len(carried) == 0 {
		return statuses
	}
	out := make([]corev1.ContainerStatus, len(statuses))
	for i, cs := range statuses {
		if c, ok := carried[cs.Name]; ok {
			cs.RestartCount += c.Restarts
			if cs.LastTerminationState == (corev1.ContainerState{}) {
				cs.LastTerminationState = c.LastState
			}
		}
		out[i] = cs
	}
	return out
}

// startTrouble is what keeps a Starting pod's containers from starting,
// from the folded report: the first init container, then container,
// waiting for another reason than being created (CrashLoopBackOff, …) or
// whose start failed (StartError); "" when none does.
func startTrouble(r *events.PodRecord) (reason, message string) {
	var names []string
	for _, cs := range append(append([]corev1.ContainerStatus(nil), r.InitContainerStatuses...), r.ContainerStatuses...) {
		why, msg := "", ""
		switch w, t := cs.State.Waiting, cs.State.Terminated; {
		case w != nil && w.Reason != "" && w.Reason != events.ReasonContainerCreating && w.Reason != reasonPodInitializing:
			why, msg = w.Reason, w.Message
		case t != nil && t.Reason == guestchannel.ReasonStartError:
			why, msg = t.Reason, t.Message
		default:
			continue
		}
		if reason == "" {
			reason, message = why, "container "+cs.Name+": "+msg
		}
		names = append(names, cs.Name)
	}
	if len(names) > 1 {
		message += fmt.Sprintf(" (not starting: %s)", strings.Join(names, ", "))
	}
	return reason, message
}

// reasonPodInitializing is the waiting reason of containers behind init
// containers, as in Kubernetes.
const reasonPodInitializing = "PodInitializing"

// initProgress says which init container the pod waits for and how many
// completed (kubectl's Init:N/M), from the folded report; "" once every
// one completed.
func initProgress(r *events.PodRecord) string {
	by := statusesByName(r.InitContainerStatuses)
	for done, c := range r.Pod.Spec.InitContainers {
		st := by[c.Name].State
		if st.Terminated != nil && st.Terminated.ExitCode == 0 {
			continue
		}
		state := "waiting"
		switch {
		case st.Running != nil:
			state = "running"
		case st.Terminated != nil:
			state = fmt.Sprintf("exited %d", st.Terminated.ExitCode)
		}
		return fmt.Sprintf("init container %s %s (%d of %d completed)", c.Name, state, done, len(r.Pod.Spec.InitContainers))
	}
	return ""
}

// setReported sets a condition from the report: True with reason Reported,
// or False with the reason and a message naming the containers.
func setReported(r *events.PodRecord, t string, ok bool, reason, why string, now time.Time) {
	if ok {
		r.SetCondition(t, events.ConditionTrue, ReasonReported, "", now)
		return
	}
	switch why {
	case ReasonPodCompleted:
		r.SetCondition(t, events.ConditionFalse, ReasonPodCompleted, "every container terminated", now)
		return
	case ReasonPodFailed:
		r.SetCondition(t, events.ConditionFalse, ReasonPodFailed, "the pod failed: its containers will not run again", now)
		return
	}
	r.SetCondition(t, events.ConditionFalse, reason, why, now)
}

// settle moves the phase where the guest's statuses say it is: a pod whose
// VM is on (Starting) becomes Running once every container has started
// (announcing pod.running first); a pod whose containers all terminated for
// good becomes Succeeded or Failed (the VM stays, with the containers' logs,
// until the pod is deleted). Nothing else moves: a deleting or migrating
// pod keeps its phase, and a Running pod never goes back to Starting (a
// crash-looping container shows in ContainersReady, as in Kubernetes).
func (s *Service) settle(ctx context.Context, r *events.PodRecord) error {
	if r.Guest == nil || !r.DeletionRequestedAt.IsZero() {
		return nil
	}
	switch r.Phase {
	case events.PodPhaseStarting, events.PodPhaseRunning:
	default:
		return nil
	}
	if g := r.Guest; g.Phase == events.GuestPhaseFailed && g.Reason == guestchannel.ReasonEvicted {
		// The agent evicted the pod (an emptyDir past its sizeLimit), as
		// the kubelet does: Failed, whatever the restart policy.
		r.Phase, r.Reason, r.Message = events.PodPhaseFailed, g.Reason, g.Message
		s.log.Info("pod evicted by its guest", "key", r.Key(), "message", g.Message)
		return nil
	}
	if r.Guest.Phase == events.GuestPhaseStopping {
		// The guest is stopping its pod (an eviction): its containers
		// end now, and its next report says how the pod ended.
		return nil
	}
	if phase, done := finished(r); done {
		r.Phase = phase
		r.Reason, r.Message = "", ""
		if phase == events.PodPhaseFailed {
			r.Reason, r.Message = ReasonContainersFailed, failedContainers(r)
		}
		s.log.Info("pod finished", "key", r.Key(), "phase", phase, "message", r.Message)
		return nil
	}
	if r.Phase == events.PodPhaseStarting && allStarted(r) {
		if err := s.out.Emit(ctx, recordCause(r), &events.PodRunning{
			PodRef: events.PodRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID}, VM: r.VMRef, Host: r.Host, IP: r.IP,
		}); err != nil {
			return err
		}
		r.Phase, r.Reason, r.Message = events.PodPhaseRunning, "", ""
		s.log.Info("pod running", "key", r.Key(), "uid", r.UID, "vm", r.VMRef, "host", r.Host, "ip", r.IP)
	}
	return nil
}

// started says whether a container's process has ever run: running now,
// or an instance that ended after it ran. An instance the runtime could not
// start at all (reason StartError: no such command, a bad working
// directory) never ran, so a pod whose container only fails to start is not
// Running, however often it is retried.
func started(cs corev1.ContainerStatus) bool {
	ran := func(t *corev1.ContainerStateTerminated) bool {
		return t != nil && t.Reason != guestchannel.ReasonStartError
	}
	return cs.State.Running != nil || ran(cs.State.Terminated) || ran(cs.LastTerminationState.Terminated)
}

// allStarted says whether every container of the pod has started.
func allStarted(r *events.PodRecord) bool {
	by := statusesByName(r.ContainerStatuses)
	for _, c := range r.Pod.Spec.Containers {
		cs, ok := by[c.Name]
		if !ok || !started(cs) {
			return false
		}
	}
	return true
}

// finished reports whether every container terminated for good, and then
// the phase: restartPolicy Never stops at any exit, OnFailure only at
// exit 0, Always never. An init container that failed under Never fails the
// pod at once, as in Kubernetes.
func finished(r *events.PodRecord) (phase string, done bool) {
	policy := r.Pod.Spec.RestartPolicy
	if policy == "" || policy == corev1.RestartPolicyAlways {
		return "", false
	}
	if policy == corev1.RestartPolicyNever {
		for _, cs := range r.InitContainerStatuses {
			if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
				return events.PodPhaseFailed, true
			}
		}
	}
	by := statusesByName(r.ContainerStatuses)
	failed := false
	for _, c := range r.Pod.Spec.Containers {
		cs, ok := by[c.Name]
		if !ok || cs.State.Terminated == nil {
			return "", false
		}
		if cs.State.Terminated.ExitCode != 0 {
			if policy == corev1.RestartPolicyOnFailure {
				return "", false // it will be restarted
			}
			failed = true
		}
	}
	if failed {
		return events.PodPhaseFailed, true
	}
	return events.PodPhaseSucceeded, true
}

// initialized says whether every init container completed, and if not
// which did not.
func initialized(r *events.PodRecord) (bool, string) {
	by := statusesByName(r.InitContainerStatuses)
	var pending []string
	for _, c := range r.Pod.Spec.InitContainers {
		cs, ok := by[c.Name]
		if !ok || cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
			pending = append(pending, c.Name)
		}
	}
	if len(pending) == 0 {
		return true, ""
	}
	return false, "containers with incomplete status: [" + strings.Join(pending, " ") + "]"
}

// containersReady says whether every container is ready, and if not which
// are not.
func containersReady(r *events.PodRecord) (bool, string) {
	by := statusesByName(r.ContainerStatuses)
	var unready []string
	for _, c := range r.Pod.Spec.Containers {
		if cs, ok := by[c.Name]; !ok || !cs.Ready {
			unready = append(unready, c.Name)
		}
	}
	if len(unready) == 0 {
		return true, ""
	}
	return false, "containers with unready status: [" + strings.Join(unready, " ") + "]"
}

// failedContainers names the containers that ended with a non-zero exit.
func failedContainers(r *events.PodRecord) string {
	var out []string
	// An init container is named as one: the pod failed before its
	// containers ran (kubectl's Init:Error).
	for _, l := range []struct {
		kind string
		list []corev1.ContainerStatus
	}{{"init container ", r.InitContainerStatuses}, {"", r.ContainerStatuses}} {
		for _, cs := range l.list {
			if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
				reason := t.Reason
				if reason == "" {
					reason = "Error"
				}
				out = append(out, fmt.Sprintf("%s%s exited %d (%s)", l.kind, cs.Name, t.ExitCode, reason))
			}
		}
	}
	return strings.Join(out, "; ")
}

func statusesByName(list []corev1.ContainerStatus) map[string]corev1.ContainerStatus {
	out := make(map[string]corev1.ContainerStatus, len(list))
	for _, cs := range list {
		out[cs.Name] = cs
	}
	return out
}

// notRunAgain says that a container that had terminated for good in a
// boot (was) was not run again by the next (n): it reports that very
// terminated state, with no restart of its own (the pod VM's spec marked
// it completed).
func notRunAgain(was, n corev1.ContainerStatus) bool {
	return was.State.Terminated != nil && n.State.Terminated != nil && n.RestartCount == 0 &&
		equality.Semantic.DeepEqual(was.State.Terminated, n.State.Terminated)
}

// startedAt is when a container state began: running or terminated; nil
// for waiting or no state.
func startedAt(st corev1.ContainerState) *metav1.Time {
	switch {
	case st.Running != nil:
		return &st.Running.StartedAt
	case st.Terminated != nil:
		return &st.Terminated.StartedAt
	}
	return nil
}
