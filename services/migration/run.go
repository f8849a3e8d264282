package migration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/types"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/lease"
)

// refuse is a precheck (or a relocation) that says no: the migration fails
// with the reason, and no retry can change the answer.
func refuse(reason, format string, args ...any) error {
	return bus.Permanent(bus.WithReason(reason, fmt.Errorf(format, args...)))
}

// runMigration drives one migration that has room: prechecks, vMotion,
// finalization. It owns the record from Prechecking on; handlers touch it
// only to ask for a cancel.
//
// A refusal ends the migration (conclude). Any other error — the KV store
// or the bus not answering for a moment, vCenter's answer lost — leaves the
// record as it is, active: the leader's repair sweep queues it again, and
// the next run picks up where vCenter says the VM is. So a migration is
// never failed while its VM may be on the target, and never left behind.
func (s *Service) runMigration(ctx context.Context, id string) {
	defer func() {
		s.mu.Lock()
		s.lim.done(id)
		delete(s.flights, id)
		s.mu.Unlock()
		s.poke()
	}()
	r, err := s.store.migration(ctx, id)
	if err != nil || r == nil || !r.Active() {
		if err != nil && ctx.Err() == nil {
			s.log.Warn("read migration; the repair sweep retries it", "migration", id, "err", err)
		}
		return
	}
	ctx, span := s.tracer.Start(ctx, "migration.run")
	defer span.End()
	span.SetAttributes(attribute.String("podvisor.service", Name), attribute.String("pod", r.Key()),
		attribute.String("pod.uid", r.UID), attribute.String("migration.id", r.ID),
		attribute.String("migration.source", r.SourceHost), attribute.String("migration.target", r.TargetHost))

	err = s.drive(ctx, r)
	switch {
	case err == nil:
		return
	case ctx.Err() != nil || errors.Is(err, lease.ErrLost):
		// Stopping, or no longer leading: the record keeps its phase
		// (and task) and the next leader resumes it.
		return
	case !bus.IsPermanent(err):
		s.log.Warn("migration step could not run; the repair sweep retries it", "migration", id, "err", err)
		return
	}
	span.SetStatus(codes.Error, err.Error())
	if err := s.conclude(ctx, id, err); err != nil && ctx.Err() == nil {
		s.log.Warn("end refused migration; the repair sweep retries it", "migration", id, "err", err)
	}
}

// conclude ends a migration the runner refused to go on with. One whose
// vMotion may have run ends by where vCenter says the VM is: if it reached
// the target after all (a task outliving an error, an answer lost on the
// way), the migration completed; otherwise it failed and its target
// reservation is released (migration.failed). An error leaves the record
// active for the repair sweep.
func (s *Service) conclude(ctx context.Context, id string, refusal error) error {
	r, err := s.store.migration(ctx, id)
	if err != nil || r == nil || !r.Active() {
		return err // gone, or ended meanwhile: its outcome is announced already
	}
	if r.Started() || r.RelocateTask != "" {
		if r.RelocateTask != "" {
			// A task still running may yet move the VM: let it end first
			// (no later than its deadline). One vCenter says still runs
			// leaves the record active, the target held.
			if err := s.awaitRelocation(ctx, r, taskRef(r.RelocateTask), nil); err != nil && !bus.IsPermanent(err) {
				return err
			}
		}
		on, err := s.vmLocation(ctx, r)
		if err != nil {
			return err
		}
		if on == r.TargetHost {
			s.log.Warn("the pod VM reached the target despite the error: completing", "migration", id, "err", refusal)
			return s.finish(ctx, r, events.MigrationPhaseCompleted, "", "")
		}
	}
	return s.finish(ctx, r, events.MigrationPhaseFailed, bus.ReasonOf(refusal, ReasonPrecheckFailed), refusal.Error())
}

// vmLocation is the host vCenter says the migration's pod VM runs on, ""
// when the VM is gone.
func (s *Service) vmLocation(ctx context.Context, r *events.MigrationRecord) (string, error) {
	ref := r.VMRef
	if ref == "" {
		pod, err := s.store.pod(ctx, r.Namespace, r.Pod)
		if err != nil {
			return "", err
		}
		if pod == nil || (r.UID != "" && pod.UID != r.UID) || pod.VMRef == "" {
			return "", nil
		}
		ref = pod.VMRef
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.PrecheckTimeout)
	defer cancel()
	vm, err := s.vm.VM(cctx, ref)
	if errors.Is(err, vmotion.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if r.UID != "" && vm.UID != "" && vm.UID != r.UID {
		return "", nil // the reference names another pod's VM now: this one is gone
	}
	return vm.Host, nil
}

// drive runs the steps; a returned error fails the migration (with the
// reason refuse attached, if any).
func (s *Service) drive(ctx context.Context, r *events.MigrationRecord) error {
	if r.CancelRequested && !r.Started() {
		return s.cancelled(ctx, r, "Cancelled", "cancelled before relocating")
	}
	began := time.Now()
	resumedTask := r.RelocateTask
	if resumedTask != "" || r.Started() {
		// An earlier run began the vMotion: no cancel can stop it now.
		s.markRelocating(r.ID)
	}
	if !r.Started() {
		// A run that began the vMotion keeps its phase, so that whoever
		// ends it knows the VM may have moved.
		var err error
		if r, err = s.setPhase(ctx, r, events.PhasePrechecking, 0); err != nil {
			return err
		}
		if err := s.progress(ctx, r, events.PhasePrechecking, 0, 0, fmt.Sprintf("checking %s for %s", r.TargetHost, r.Key())); err != nil {
			return err
		}
	}
	if resumedTask != "" {
		// A vMotion started by an earlier run: wait for it to end (no
		// later than its deadline, counted from when vCenter queued it,
		// not from this run) before looking where the VM is. Whatever its
		// outcome, the prechecks below judge by where the VM is: moved,
		// it is announced; still on the source, it is moved again.
		if err := s.awaitRelocation(ctx, r, taskRef(resumedTask), nil); err != nil && !bus.IsPermanent(err) {
			return err
		} else if err != nil {
			s.log.Warn("the relocation an earlier run started ended without moving the VM; looking where it is", "migration", r.ID, "task", resumedTask, "err", err)
		}
	}
	// Prechecks that could not run (vCenter or the KV store not answering)
	// are tried as often as a delivery would be; a refusal ends them.
	var plan *plan
	err := bus.Retry(ctx, s.cfg.MaxAttempts, s.cfg.BackOff, func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, s.cfg.PrecheckTimeout)
		defer cancel()
		var err error
		if plan, err = s.precheck(pctx, r); err != nil && !bus.IsPermanent(err) {
			s.log.Warn("precheck could not run", "migration", r.ID, "err", err)
		}
		return err
	})
	if err != nil && !bus.IsPermanent(err) && ctx.Err() == nil {
		// The prechecks never got an answer: give up (conclude looks
		// where the VM is if an earlier run began moving it).
		return bus.Permanent(bus.WithReason(ReasonPrecheckFailed, err))
	}
	if err != nil {
		return err
	}
	if plan.alreadyThere {
		// Moved by an earlier run: only the announcement is missing.
		return s.finalize(ctx, r)
	}
	if s.hooks.beforeRelocate != nil {
		s.hooks.beforeRelocate(r.ID)
	}
	// The cancel checkpoint: past it the vMotion starts and a cancel is
	// refused. A lost host cancels here too.
	s.mu.Lock()
	f := s.flights[r.ID]
	if f != nil && f.cancelled {
		reason, msg := f.cancelReason, f.cancelMsg
		s.mu.Unlock()
		return s.cancelled(ctx, r, reason, msg)
	}
	if f != nil {
		f.relocating = true
	}
	s.mu.Unlock()

	prechecked := time.Now()
	if err := s.relocate(ctx, r, plan); err != nil {
		return err
	}
	if err := s.hooks.at(ctx, r.ID, stepRelocated); err != nil {
		return err
	}
	s.log.Debug("relocated", "migration", r.ID, "precheck", prechecked.Sub(began), "relocate", time.Since(prechecked))
	return s.finalize(ctx, r)
}

// markRelocating refuses cancels of a migration from now on.
func (s *Service) markRelocating(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.flights[id]; f != nil {
		f.relocating = true
	}
}

// cancelled ends the migration as cancelled (or failed, for a lost host).
func (s *Service) cancelled(ctx context.Context, r *events.MigrationRecord, reason, msg string) error {
	phase := events.MigrationPhaseCancelled
	if reason == ReasonHostLost {
		phase = events.MigrationPhaseFailed
	}
	if err := s.finish(ctx, r, phase, reason, msg); err != nil {
		s.log.Error("record migration cancel", "migration", r.ID, "err", err)
	}
	return nil
}

func (s *Service) setPhase(ctx context.Context, r *events.MigrationRecord, phase string, percent int) (*events.MigrationRecord, error) {
	updated, err := s.store.updateMigration(ctx, r.ID, func(rec *events.MigrationRecord) bool {
		if !rec.Active() {
			return false
		}
		if rec.StartedAt.IsZero() {
			rec.StartedAt = s.now().UTC()
		}
		rec.Phase, rec.Percent, rec.QueuePosition, rec.Reason = phase, percent, 0, ""
		rec.Message = ""
		return true
	})
	if err != nil {
		return nil, err
	}
	if updated == nil || !updated.Active() {
		return nil, fmt.Errorf("migration %s ended meanwhile", r.ID)
	}
	return updated, nil
}

// plan is what the prechecks found.
type plan struct {
	vmRef        string
	target       *vmotion.Host
	alreadyThere bool
}

// precheck checks what vCenter would check before a vMotion, and what the
// simulator does not: the pod is running on the source, the target answers,
// is not in maintenance or cordoned, mounts the VM's datastores and carries
// every network of the pod.
func (s *Service) precheck(ctx context.Context, r *events.MigrationRecord) (*plan, error) {
	pod, err := s.store.pod(ctx, r.Namespace, r.Pod)
	if err != nil {
		return nil, err
	}
	switch {
	case pod == nil:
		return nil, refuse(ReasonPodNotFound, "pod %s does not exist", r.Key())
	case r.UID != "" && pod.UID != r.UID:
		return nil, refuse(ReasonPodReplaced, "pod %s was replaced (uid %s, the migration was for %s)", r.Key(), pod.UID, r.UID)
	case !pod.DeletionRequestedAt.IsZero():
		return nil, refuse(ReasonNotRunning, "pod %s is being deleted", r.Key())
	case pod.Host == r.TargetHost && pod.VMRef != "":
		// An earlier run moved it and the provisioner already knows.
		return &plan{vmRef: pod.VMRef, alreadyThere: true}, nil
	case !events.PodHasVM(pod.Phase):
		return nil, refuse(ReasonNotRunning, "pod %s is %s: it has no powered-on VM to move", r.Key(), pod.Phase)
	case pod.VMRef == "":
		return nil, refuse(ReasonNotRunning, "pod %s has no VM yet", r.Key())
	case pod.Host != r.SourceHost:
		return nil, refuse(ReasonPodMoved, "pod %s runs on %s, not on %s where the migration starts", r.Key(), pod.Host, r.SourceHost)
	}

	// Where the VM is comes first: one an earlier run already moved only
	// needs announcing, whatever became of the target since (cordoned by
	// a drain, say).
	vm, err := s.vm.VM(ctx, pod.VMRef)
	if errors.Is(err, vmotion.ErrNotFound) {
		return nil, refuse(ReasonVMNotFound, "pod VM %s of %s does not exist in vCenter", pod.VMRef, r.Key())
	}
	if err != nil {
		return nil, err
	}
	if !events.IsPodVM(vm.UID, vm.Name, pod.UID, pod.VMName) {
		// The reference names another pod's VM (a rebuilt vCenter) until
		// the provisioner's drift repair creates this pod's again.
		return nil, refuse(ReasonVMNotFound, "pod VM %s of %s does not exist in vCenter (%s is VM %s now)", pod.VMName, r.Key(), pod.VMRef, vm.Name)
	}
	if vm.Host == r.TargetHost {
		return &plan{vmRef: vm.Ref.Value, alreadyThere: true}, nil
	}

	target, err := s.vm.Host(ctx, r.TargetHost)
	if errors.Is(err, vmotion.ErrNotFound) {
		return nil, refuse(ReasonTargetNotFound, "host %s does not exist", r.TargetHost)
	}
	if err != nil {
		return nil, err
	}
	if !target.Connected() {
		return nil, refuse(ReasonTargetNotConnected, "target host %s is %s", r.TargetHost, target.ConnectionState)
	}
	if target.Maintenance {
		return nil, refuse(ReasonTargetInMaintenance, "target host %s is in maintenance mode", r.TargetHost)
	}
	if hr, err := s.store.host(ctx, r.TargetHost); err != nil {
		return nil, err
	} else if hr != nil && hr.Cordoned {
		return nil, refuse(ReasonTargetCordoned, "target host %s is cordoned", r.TargetHost)
	}
	source, err := s.vm.Host(ctx, r.SourceHost)
	if err != nil && !errors.Is(err, vmotion.ErrNotFound) {
		return nil, err
	}
	if source == nil || !source.Connected() {
		state := "gone"
		if source != nil {
			state = source.ConnectionState
		}
		return nil, refuse(ReasonSourceNotConnected, "source host %s is %s; a vMotion needs it answering", r.SourceHost, state)
	}

	if err := s.checkNetworks(ctx, r, pod); err != nil {
		return nil, err
	}

	if vm.Host != r.SourceHost {
		return nil, refuse(ReasonVMNotOnSource, "pod VM %s runs on %s, not on %s", vm.Name, vm.Host, r.SourceHost)
	}
	for _, ds := range vm.Datastores {
		if !slices.Contains(target.Datastores, ds) {
			return nil, refuse(ReasonDatastoreMissingOnTarget, "target host %s does not mount datastore %s holding pod VM %s", r.TargetHost, ds, vm.Name)
		}
	}
	return &plan{vmRef: vm.Ref.Value, target: target}, nil
}

// summarizeHosts names up to four hosts.
func summarizeHosts(hosts []string) string {
	if len(hosts) <= 4 {
		return strings.Join(hosts, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(hosts[:4], ", "), len(hosts)-4)
}

func taskRef(v string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "Task", Value: v}
}

// progressStep is the smallest change in percent worth an event.
const progressStep = 10

// relocate runs the vMotion into the target cluster's resource pool,
// reporting progress, within RelocateTimeout.
func (s *Service) relocate(ctx context.Context, r *events.MigrationRecord, p *plan) error {
	r, err := s.setPhase(ctx, r, events.PhaseRelocating, 0)
	if err != nil {
		return err
	}
	if err := s.progress(ctx, r, events.PhaseRelocating, 0, 0, fmt.Sprintf("moving to %s", r.TargetHost)); err != nil {
		return err
	}
	// Only the leader moves VMs: prove the lease is still ours right
	// before the vMotion (a leader paused past its lease and replaced
	// meanwhile stops here; the new leader resumes the migration).
	if s.lease != nil {
		if err := s.lease.Fence(ctx); err != nil {
			return fmt.Errorf("migration %s: before the vMotion: %w", r.ID, err)
		}
	}
	sctx, scancel := context.WithTimeout(ctx, s.cfg.PrecheckTimeout)
	ref, err := s.vm.StartRelocate(sctx, vmotion.Move{VM: p.vmRef, Host: p.target.Ref, Pool: p.target.Pool})
	scancel()
	if err != nil {
		return refuse(ReasonRelocateFailed, "%v", err)
	}
	if _, err := s.store.updateMigration(ctx, r.ID, func(rec *events.MigrationRecord) bool {
		rec.RelocateTask, rec.VMRef = ref.Value, p.vmRef
		return rec.Active()
	}); err != nil {
		return err
	}

	// Progress is published under mu, and done is set under mu once the
	// wait returns, so no late percentage follows the Finalizing progress.
	var mu sync.Mutex
	last, done := 0, false
	defer func() {
		mu.Lock()
		done = true
		mu.Unlock()
	}()
	report := func(pct int) {
		mu.Lock()
		defer mu.Unlock()
		if done || pct < last+progressStep || pct >= 100 {
			return
		}
		last = pct
		_ = s.progress(ctx, r, events.PhaseRelocating, pct, 0, "")
		_, _ = s.store.updateMigration(ctx, r.ID, func(rec *events.MigrationRecord) bool {
			if rec.Phase != events.PhaseRelocating || rec.Percent >= pct {
				return false
			}
			rec.Percent = pct
			return true
		})
	}
	err = s.awaitRelocation(ctx, r, ref, report)
	if err != nil && bus.ReasonOf(err, "") == ReasonTimeout {
		// vCenter may refuse a cancel once the switch-over began, and then
		// the VM lands on the target after all: report what is true.
		if on, lerr := s.vmLocation(ctx, r); lerr == nil && on == r.TargetHost {
			s.log.Warn("relocation outlived its timeout but completed", "migration", r.ID, "task", ref.Value)
			return nil
		}
	}
	return err
}

// cancelGrace is how long a relocation cancelled at its deadline is given
// to stop before its state is judged.
var cancelGrace = 30 * time.Second

// awaitRelocation waits for a migration's relocation task to end, and no
// longer than RelocateTimeout after vCenter queued it (vCenter's task
// age, so a resumed runner does not start the clock again). A task still
// running then is cancelled and given cancelGrace to stop. It returns nil
// when the VM was relocated; a refusal (the migration ends, its slot and
// target reservation freed) when the task failed (RelocateFailed) or was
// cancelled at its deadline (Timeout); and a plain error, which leaves the
// record active with its reservation held for the repair sweep, while
// vCenter says the task still runs (a cancel it did not take) or cannot
// say. A task vCenter no longer has returns nil too: the caller judges by
// where the VM is, as it always does after a relocation.
//
// Before, the wait was RelocateTimeout from each waiter's own start, then
// RelocateTimeout again after a cancel, and one more on each resumption:
// a relocation that never ended held its per-host slot, and the drain
// queued behind it, for tens of minutes.
func (s *Service) awaitRelocation(ctx context.Context, r *events.MigrationRecord, ref types.ManagedObjectReference, report func(int)) error {
	remaining := s.cfg.RelocateTimeout
	st, err := s.taskState(ctx, ref)
	switch {
	case errors.Is(err, vmotion.ErrNotFound):
		return nil
	case err != nil:
		// Its age is unknown: wait the whole timeout from now.
		s.log.Warn("read relocation task", "migration", r.ID, "task", ref.Value, "err", err)
	case st.Done():
		return relocationOutcome(r, st)
	default:
		remaining -= st.Age
	}
	if remaining > 0 {
		wctx, cancel := context.WithTimeout(ctx, remaining)
		err := s.vm.Wait(wctx, ref, report)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, vmotion.ErrNotFound):
			return nil
		case wctx.Err() == nil:
			return refuse(ReasonRelocateFailed, "vCenter: %v", err)
		}
	}
	// Past its deadline: cancel it and give the cancel time to take.
	s.log.Warn("relocation outlived its timeout: cancelling it", "migration", r.ID, "task", ref.Value, "timeout", s.cfg.RelocateTimeout)
	if cerr := s.vm.CancelTask(ctx, ref); cerr != nil {
		s.log.Warn("cancel timed-out relocation", "migration", r.ID, "task", ref.Value, "err", cerr)
	}
	gctx, gcancel := context.WithTimeout(ctx, cancelGrace)
	err = s.vm.Wait(gctx, ref, nil)
	gcancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	st, err = s.taskState(ctx, ref)
	switch {
	case errors.Is(err, vmotion.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("migration %s: relocation task %s past its deadline: %w", r.ID, ref.Value, err)
	case st.State == string(types.TaskInfoStateSuccess):
		return nil
	case !st.Done():
		return fmt.Errorf("migration %s: relocation task %s still runs %s after it was queued, and after a cancel", r.ID, ref.Value, st.Age.Round(time.Second))
	}
	return refuse(ReasonTimeout, "the relocation to %s did not finish within %s and was cancelled", r.TargetHost, s.cfg.RelocateTimeout)
}

// relocationOutcome is what an ended relocation task means for the
// migration.
func relocationOutcome(r *events.MigrationRecord, st *vmotion.TaskState) error {
	switch {
	case st.State == string(types.TaskInfoStateSuccess):
		return nil
	case st.Cancelled:
		return refuse(ReasonTimeout, "the relocation to %s was cancelled: %v", r.TargetHost, st.Err)
	}
	return refuse(ReasonRelocateFailed, "vCenter: %v", st.Err)
}

// taskState reads a task's state within one vCenter call's bound.
func (s *Service) taskState(ctx context.Context, ref types.ManagedObjectReference) (*vmotion.TaskState, error) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.PrecheckTimeout)
	defer cancel()
	return s.vm.Task(cctx, ref)
}

// finalize confirms where vCenter says the VM runs and announces the move.
func (s *Service) finalize(ctx context.Context, r *events.MigrationRecord) error {
	r, err := s.setPhase(ctx, r, events.PhaseFinalizing, 100)
	if err != nil {
		return err
	}
	if err := s.progress(ctx, r, events.PhaseFinalizing, 100, 0, ""); err != nil {
		return err
	}
	if err := s.hooks.at(ctx, r.ID, stepFinalizing); err != nil {
		return err
	}
	pod, err := s.store.pod(ctx, r.Namespace, r.Pod)
	if err != nil {
		return err
	}
	if pod != nil && pod.VMRef != "" {
		cctx, cancel := context.WithTimeout(ctx, s.cfg.PrecheckTimeout)
		vm, err := s.vm.VM(cctx, pod.VMRef)
		cancel()
		if err != nil {
			return err
		}
		if vm.Host != r.TargetHost {
			return refuse(ReasonRelocateFailed, "vCenter reports pod VM %s on %s after relocating to %s", vm.Name, vm.Host, r.TargetHost)
		}
	}
	return s.finish(ctx, r, events.MigrationPhaseCompleted, "", "")
}
