package scheduler

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// Native VMs are placed by the same loop, framework and ledger as pods: a
// VM is a PodInfo whose size is its class (a vCPU a core, its configured
// memory), charged to the host's ledger entry under its uid like a pod VM.
// So a host full of VMs leaves pods pending, and the reverse. What differs
// is only what is published (vm.scheduled / vm.unschedulable, with the
// generation placed) and that a VM may change size: a resize reserves the
// new size on the VM's host as uid@resize-<generation> beside the old
// allocation, then promotes it (so the host must hold both sizes while
// the resize is decided).

// vmKeyPrefix keeps VMs apart from pods of the same name in the pending
// set and logs.
const vmKeyPrefix = "vm:"

func isVM(p *framework.PodInfo) bool { return strings.HasPrefix(p.Key, vmKeyPrefix) }

// vmInfo compiles a VM for the framework.
func vmInfo(ns, name, uid string, size events.VMSize, networks []string, labels map[string]string) (*framework.PodInfo, error) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	p, err := framework.NewPodInfo(pod, uid, framework.PodSize{CPUMilli: size.CPUMilli(), MemoryBytes: size.MemoryBytes()}, networks)
	if err != nil {
		return nil, err
	}
	p.Key = vmKeyPrefix + events.PodKey(ns, name)
	p.VM = true
	return p, nil
}

func (s *Service) vmGeneration(uid string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.vmGen[uid]; g > 0 {
		return g
	}
	return 1
}

func (s *Service) setVMGeneration(uid string, g int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g > s.vmGen[uid] {
		s.vmGen[uid] = g
	}
}

func (s *Service) onVMAccepted(ctx context.Context, m *bus.Message, e *events.VMAccepted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	s.setVMGeneration(e.UID, e.Generation)
	p, err := vmInfo(e.Namespace, e.Name, e.UID, e.Size, e.Spec.Networks, e.Labels)
	if err != nil {
		stub := &framework.PodInfo{Namespace: e.Namespace, Name: e.Name, UID: e.UID, Key: vmKeyPrefix + events.PodKey(e.Namespace, e.Name)}
		return s.publishUnschedulableMessage(ctx, m.Event, stub, err.Error(), nil, 0)
	}
	host, placed, resized := s.heldVM(p)
	if placed && resized {
		return s.resizeVM(ctx, m.Event, p, host, e.Generation)
	}
	if !placed {
		// A VM evicted and waiting for a host, given a new generation:
		// still only where its disks are.
		rec, err := s.vmRecord(ctx, e.Namespace, e.Name)
		if err != nil {
			return err
		}
		if rec != nil && rec.UID == e.UID {
			p.Datastores = disksOf(rec)
		}
	}
	return s.schedulePod(ctx, m.Event, p)
}

// heldVM tells where the ledger holds VM p (placed) and whether the room
// held there is of another size than p's (resized since it was reserved).
func (s *Service) heldVM(p *framework.PodInfo) (host string, placed, resized bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	host, placed = s.allocIndex[p.UID]
	if !placed {
		return "", false, false
	}
	cur := s.entries[host].Allocations[p.UID]
	return host, true, cur.CPUMilli != p.CPUMilli || cur.MemoryBytes != p.MemoryBytes
}

// resizeVM reserves a VM's new size on its own host and promotes it.
func (s *Service) resizeVM(ctx context.Context, cause event.Event, p *framework.PodInfo, host string, gen int64) error {
	id := fmt.Sprintf("resize-%d", gen)
	alloc := allocationOf(p)
	alloc.Kind, alloc.MigrationID = events.AllocationMigration, id
	r := newRequest(p, alloc)
	r.target = host
	o := s.submit(ctx, r)
	switch {
	case errors.Is(o.err, ErrPodGone):
		return nil
	case o.err != nil:
		return fmt.Errorf("resize %s: %w", p.Key, o.err)
	case o.fit != nil:
		// The VM keeps its old size and host; the provisioner shows why.
		return s.publishUnschedulableMessage(ctx, cause, p, "resize on "+host+": "+o.fit.Error(), nil, 1)
	}
	entry, _, err := s.ledger.Promote(ctx, host, p.UID, id)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.applyEntryLocked(entry)
	s.mu.Unlock()
	s.log.Info("vm resized", "vm", p.Key, "host", host, "cpuMilli", p.CPUMilli, "memoryBytes", p.MemoryBytes)
	s.pending.kickAll()
	return s.publishScheduled(ctx, cause, p, s.placementOf(host), nil)
}

func (s *Service) onVMDeleted(ctx context.Context, _ *bus.Message, e *events.VMDeleted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	s.mu.Lock()
	delete(s.vmGen, e.UID)
	s.mu.Unlock()
	return s.onPodGone(ctx, vmKeyPrefix+e.ObjectKey(), e.UID, e.Host, true)
}

// onVMEvicted frees the VM's room on the host it lost and places it again.
func (s *Service) onVMEvicted(ctx context.Context, m *bus.Message, e *events.VMEvicted) error {
	annotate(ctx, e.ObjectKey(), e.UID)
	if err := s.unplace(ctx, e.UID, e.Host); err != nil {
		return err
	}
	rec, err := s.vmRecord(ctx, e.Namespace, e.Name)
	if err != nil {
		return err
	}
	if rec == nil || rec.UID != e.UID || !rec.DeletionRequestedAt.IsZero() {
		return nil
	}
	s.setVMGeneration(rec.UID, rec.Generation)
	p, err := vmInfo(rec.Namespace, rec.Name, rec.UID, rec.Size, rec.Spec.EffectiveNetworks(), rec.Labels)
	if err != nil {
		return bus.Permanent(err)
	}
	p.Exclude = map[string]bool{e.Host: true}
	p.Datastores = disksOf(rec)
	return s.schedulePod(ctx, m.Event, p)
}

// disksOf names the datastores of the disks a VM made before has left (an
// evicted VM's): it is made again from them, as vSphere HA restarts a VM,
// so it goes only to a host that mounts them. None for a VM never made.
func disksOf(r *events.VMRecord) []string {
	if r.DisksOn != "" {
		return []string{r.DisksOn}
	}
	return r.Status.Datastores
}

// vmRecord reads the provisioner's record of a VM (nil if none).
func (s *Service) vmRecord(ctx context.Context, ns, name string) (*events.VMRecord, error) {
	rec, _, err := record.New[events.VMRecord](s.vmsKV, "vm record").Get(ctx, events.VMRecordKey(ns, name))
	return rec, err
}

// onVMMigrateRequested validates or picks a target for a VM and reserves
// it, as for a pod's migration.
func (s *Service) onVMMigrateRequested(ctx context.Context, m *bus.Message, e *events.VMMigrateRequested) error {
	annotate(ctx, e.ObjectKey(), "")
	// source is the VM's host once known: the refusal names it, so the
	// drain of that host finds the move it answers.
	source := ""
	refuse := func(uid, reason, msg string) error {
		s.log.Info("vm migration rejected", "migration", e.ID, "reason", reason, "message", msg)
		if uid == "" {
			uid = "unknown"
		}
		return s.out.Emit(ctx, &m.Event, &events.VMMigrated{ID: e.ID, VMRef: events.VMRef{Namespace: e.Namespace, Name: e.Name, UID: uid},
			SourceHost: cmp.Or(source, "unknown"), Reason: reason, Message: msg})
	}
	rec, err := s.vmRecord(ctx, e.Namespace, e.Name)
	if err != nil {
		return err
	}
	if rec == nil {
		return refuse("", "NotFound", fmt.Sprintf("VM %s/%s not found", e.Namespace, e.Name))
	}
	s.mu.Lock()
	source = cmp.Or(s.allocIndex[rec.UID], rec.Status.Host)
	s.mu.Unlock()
	if source == "" {
		return refuse(rec.UID, ReasonNotScheduled, fmt.Sprintf("VM %s is not placed on a host yet (phase %s)", rec.Key(), rec.Status.Phase))
	}
	if e.TargetHost == source {
		return refuse(rec.UID, ReasonSameHost, fmt.Sprintf("VM %s already runs on %s", rec.Key(), source))
	}
	p, err := vmInfo(rec.Namespace, rec.Name, rec.UID, rec.Size, rec.Spec.EffectiveNetworks(), rec.Labels)
	if err != nil {
		return refuse(rec.UID, ReasonNoTarget, err.Error())
	}
	// The move is a vMotion of the VM alone: its disks stay where they are.
	p.Datastores = rec.Status.Datastores
	o := s.submitMigration(ctx, p, source, e.ID, e.TargetHost)
	switch {
	case o.err != nil:
		return fmt.Errorf("place vm migration %s: %w", e.ID, o.err)
	case o.fit != nil:
		reason, msg := ReasonNoTarget, "no target host for VM "+rec.Key()+": "+o.fit.Error()
		if e.TargetHost != "" {
			for rr, mm := range o.fit.Diagnosis.Messages {
				reason, msg = rr, "target "+e.TargetHost+": "+mm
			}
		}
		return refuse(rec.UID, reason, msg)
	}
	s.log.Info("vm migration target reserved", "migration", e.ID, "vm", rec.Key(), "from", source, "to", o.placement.Host)
	return s.out.Emit(ctx, &m.Event, &events.VMMigrationTargetReserved{ID: e.ID, VMRef: events.VMRef{Namespace: e.Namespace, Name: e.Name, UID: rec.UID},
		SourceHost: source, TargetHost: o.placement.Host, Cluster: o.placement.Cluster, ResourcePool: o.placement.ResourcePool})
}

// onVMMigrated moves the allocation to the target, or frees the target's
// reservation when the VM stayed.
func (s *Service) onVMMigrated(ctx context.Context, m *bus.Message, e *events.VMMigrated) error {
	if m.Event.Source() == Source {
		return nil // our own refusal: nothing was reserved
	}
	annotate(ctx, e.ObjectKey(), e.UID)
	if e.Failed() {
		return s.releaseMigration(ctx, e.Namespace, e.Name, e.UID, e.ID, e.TargetHost)
	}
	entry, _, err := s.ledger.Promote(ctx, e.TargetHost, e.UID, e.ID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.applyEntryLocked(entry)
	s.mu.Unlock()
	if err := s.ledger.Rebind(ctx, e.UID, e.TargetHost); err != nil {
		return err
	}
	if e.SourceHost != e.TargetHost {
		if err := s.release(ctx, map[string][]string{e.SourceHost: {e.UID}}); err != nil {
			return err
		}
	}
	s.pending.kickAll()
	return nil
}

// vmView is the part of a VM record that the pending rescan decides on,
// as podView is for pods: a pass decodes every record of KV `vms`, and a
// VM's spec, image and NICs are read only for the VMs the pass takes.
type vmView struct {
	UID                 string    `json:"uid"`
	Namespace           string    `json:"namespace"`
	Name                string    `json:"name"`
	Generation          int64     `json:"generation"`
	DeletionRequestedAt time.Time `json:"deletionRequestedAt,omitzero"`
	Status              struct {
		Phase      string `json:"phase"`
		Host       string `json:"host,omitempty"`
		Conditions []struct {
			Type   string `json:"type"`
			Reason string `json:"reason,omitempty"`
		} `json:"conditions,omitempty"`
	} `json:"status"`
}

func (v *vmView) key() string { return events.PodKey(v.Namespace, v.Name) }

// scheduledReason is the reason of the VM's Scheduled condition ("" if none).
func (v *vmView) scheduledReason() string {
	for _, c := range v.Status.Conditions {
		if c.Type == events.VMConditionScheduled {
			return c.Reason
		}
	}
	return ""
}

// recoverPendingVMs is recoverPending for native VMs (KV `vms`): a VM that
// waits for a host (never placed, or evicted from its host) is held only in
// the memory of the replica that published its vm.unschedulable. At
// start-up (all) every such VM is taken; later rescans take those whose
// record says Unschedulable and that this replica does not hold. A VM held
// in the ledger while its record shows no placement for half a rescan
// interval is taken too, and its placement replayed (see recoverPending).
func (s *Service) recoverPendingVMs(ctx context.Context, all bool, now time.Time, placedSeen map[string]bool) (int, error) {
	views, err := record.New[vmView](s.vmsKV, "vm").Scan(ctx)
	if err != nil {
		return 0, fmt.Errorf("rescan pending VMs: %w", err)
	}
	n := 0
	for _, v := range views {
		// Waiting: never placed, or evicted (its host gone, the record
		// keeps the generation placed before).
		if v.Status.Host != "" || v.Status.Phase == events.VMPhaseFailed || !v.DeletionRequestedAt.IsZero() || v.Generation == 0 {
			continue
		}
		key := vmKeyPrefix + v.key()
		if s.pending.has(key, v.UID) {
			continue
		}
		s.mu.Lock()
		_, placed := s.allocIndex[v.UID]
		s.mu.Unlock()
		reason := v.scheduledReason()
		if placed {
			// As for pods: an evicted VM's allocation may be on the
			// host it was evicted from, the vm.evicted handler's to free.
			if reason != "" && reason != reasonUnschedulable {
				continue
			}
			placedSeen[v.UID] = true
			if !s.strandedFor(v.UID, now) {
				continue
			}
		} else if !all && reason != reasonUnschedulable {
			continue
		}
		// The VM's spec and size are in the full record, read now that
		// it is wanted.
		r, err := s.vmRecord(ctx, v.Namespace, v.Name)
		if err != nil || r == nil || r.UID != v.UID || r.Status.Host != "" || r.Status.Phase == events.VMPhaseFailed ||
			!r.DeletionRequestedAt.IsZero() || r.Generation == 0 {
			continue // moved on since the view was read
		}
		p, err := vmInfo(r.Namespace, r.Name, r.UID, r.Size, r.Spec.EffectiveNetworks(), r.Labels)
		if err != nil {
			continue
		}
		p.Datastores = disksOf(r)
		switch host, held, resized := s.heldVM(p); {
		case !placed || !held:
		case resized:
			// Resized since the room was reserved: the host was checked
			// for the old size only, and the scheduling loop replays a
			// held allocation as it stands. No VM is on that host yet
			// (the record shows none), so the room is freed and the VM
			// placed afresh at its new size, the held host included, as
			// a pod held on a host that refused its network is.
			if err := s.unplace(ctx, r.UID, host); err != nil {
				s.log.Warn("pending rescan: room held for a resized VM not freed", "vm", key, "host", host, "err", err)
				continue
			}
			s.log.Info("pending rescan: VM resized since its room was reserved; placing it again", "vm", key, "host", host,
				"generation", r.Generation, "cpuMilli", p.CPUMilli, "memoryBytes", p.MemoryBytes)
		default:
			s.log.Info("pending rescan: placed, but no host on the VM's record; publishing the placement again", "vm", key, "host", host)
		}
		s.setVMGeneration(r.UID, r.Generation)
		cause := event.New()
		cause.SetID(fmt.Sprintf("vm/%s/recovered/%d", r.UID, r.Generation))
		s.pending.add(p, cause, "")
		n++
	}
	return n, nil
}
