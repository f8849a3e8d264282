package nativevm

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// uidNamespace derives VM uids: the first declaration's event id and the
// VM key give the uid, so a redelivered declaration gets the same one.
var uidNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://podvisor.io/vms"))

// Reasons of vm.rejected.
const (
	ReasonInvalid  = "Invalid"
	ReasonNotFound = "NotFound"
	ReasonInUse    = "InUse"
)

// refusal is a request refused with a reason and the field at fault; the
// handler turns it into vm.rejected.
type refusal struct {
	reason, field, msg string
}

func (r *refusal) Error() string { return r.msg }

func refuse(reason, field, format string, a ...any) error {
	return bus.Permanent(&refusal{reason: reason, field: field, msg: fmt.Sprintf(format, a...)})
}

func (c *Controller) reject(ctx context.Context, cause *event.Event, kind, ns, name string, err error) error {
	rj := &events.VMRejected{Kind: kind, Namespace: ns, Name: name, Reason: bus.ReasonOf(err, ReasonInvalid), Message: err.Error()}
	var r *refusal
	if errors.As(err, &r) {
		rj.Reason, rj.Field = r.reason, r.field
	}
	var ve *events.ValidationError
	if errors.As(err, &ve) {
		rj.Field = ve.Field()
	}
	if kind != events.KindVirtualMachine {
		rj.Namespace = ""
	}
	return c.out.Emit(ctx, cause, rj, bus.Distinct(rj.Message))
}

// --- classes and images ---

func (c *Controller) onClassDeclared(ctx context.Context, m *bus.Message, e *events.VMClassDeclared) error {
	cl := e.Class
	cl.APIVersion, cl.Kind = events.APIVersion, events.KindVirtualMachineClass
	_, err := c.classes.Upsert(ctx, cl.Metadata.Name, func(r *events.VMClassRecord, _ bool) error {
		if reflect.DeepEqual(r.Class, cl) {
			return record.ErrUnchanged
		}
		r.Class, r.UpdatedAt = cl, c.now().UTC()
		return nil
	})
	if err != nil {
		return err
	}
	// VMs of the class follow its new size (a new generation each).
	return c.forEachVM(ctx, func(r *events.VMRecord) bool { return r.Spec.ClassName == cl.Metadata.Name }, func(r *events.VMRecord) error {
		return c.redeclare(ctx, &m.Event, r.Namespace, r.Name)
	})
}

func (c *Controller) onClassDeleteRequested(ctx context.Context, m *bus.Message, e *events.VMClassDeleteRequested) error {
	users, err := c.usersOf(ctx, func(r *events.VMRecord) bool { return r.Spec.ClassName == e.Name })
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return c.reject(ctx, &m.Event, events.KindVirtualMachineClass, "", e.Name,
			&refusal{ReasonInUse, "name", fmt.Sprintf("VirtualMachineClass %s is used by %v; delete or change those VMs first", e.Name, users)})
	}
	return c.classes.Delete(ctx, e.Name)
}

func (c *Controller) onImageDeclared(ctx context.Context, m *bus.Message, e *events.VMImageDeclared) error {
	img := e.Image
	img.APIVersion, img.Kind = events.APIVersion, events.KindVirtualMachineImage
	ready, reason, msg, itemID := true, "", "", ""
	if cl := img.Spec.ContentLibrary; cl != nil {
		id, err := c.findLibraryItem(ctx, cl.Library, cl.Item)
		switch {
		case err != nil:
			ready, reason, msg = false, "LibraryItemNotFound", err.Error()
		default:
			itemID = id
		}
	}
	_, err := c.images.Upsert(ctx, img.Metadata.Name, func(r *events.VMImageRecord, _ bool) error {
		if reflect.DeepEqual(r.Image, img) && r.Ready == ready && r.Reason == reason && r.LibraryItemID == itemID {
			return record.ErrUnchanged
		}
		r.Image, r.Ready, r.Reason, r.Message, r.LibraryItemID, r.UpdatedAt = img, ready, reason, msg, itemID, c.now().UTC()
		return nil
	})
	return err
}

func (c *Controller) onImageDeleteRequested(ctx context.Context, m *bus.Message, e *events.VMImageDeleteRequested) error {
	users, err := c.usersOf(ctx, func(r *events.VMRecord) bool { return r.Spec.ImageName == e.Name })
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return c.reject(ctx, &m.Event, events.KindVirtualMachineImage, "", e.Name,
			&refusal{ReasonInUse, "name", fmt.Sprintf("VirtualMachineImage %s is used by %v; delete those VMs first", e.Name, users)})
	}
	return c.images.Delete(ctx, e.Name)
}

func (c *Controller) forEachVM(ctx context.Context, match func(*events.VMRecord) bool, do func(*events.VMRecord) error) error {
	all, err := c.vms.List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for i := range all {
		if match(&all[i]) && all[i].DeletionRequestedAt.IsZero() {
			errs = append(errs, do(&all[i]))
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) usersOf(ctx context.Context, match func(*events.VMRecord) bool) ([]string, error) {
	var out []string
	err := c.forEachVM(ctx, match, func(r *events.VMRecord) error {
		out = append(out, r.Key())
		return nil
	})
	return out, err
}

// --- VMs ---

// onDeclared admits a declaration: class and image must exist; a changed
// spec or size is a new generation, announced as vm.accepted.
func (c *Controller) onDeclared(ctx context.Context, m *bus.Message, e *events.VMDeclared) error {
	vm := e.VM
	ns := vm.Namespace()
	unlock := c.locks.Lock(vm.Key())
	defer unlock()
	// A delete of the VM stored after this declaration supersedes it: a
	// declaration delivered again (its handler died, or it waited for its
	// class) once the delete is done must not make the VM again. A
	// declaration stored after the delete is a new one. Only a declaration
	// that would make the VM asks the stream: while the record stands, the
	// delete (if any) is still to come and removes what this applies.
	if cur, _, err := c.vms.Get(ctx, events.VMRecordKey(ns, vm.Metadata.Name)); err != nil {
		return err
	} else if cur == nil {
		if x, err := bus.StoredAfter[events.VMDeleteRequested](ctx, c.bus.JetStream(), vm.Key(), m.StreamSeq, nil); err != nil {
			return err
		} else if x != nil {
			m.Log.Info("declaration superseded by a later delete of the VM; nothing made", "seq", m.StreamSeq,
				"delete_seq", x.Sequence, "delete_stored", x.Time)
			return nil
		}
	}
	spec := vm.Spec
	spec.PowerState = spec.EffectivePowerState()
	spec.Networks = spec.EffectiveNetworks()
	err := c.admit(ctx, &m.Event, m.StreamSeq, ns, vm.Metadata, spec)
	var r *refusal
	if errors.As(err, &r) && r.reason == ReasonNotFound && m.Delivery < notFoundDeliveries {
		// A class or image applied in the same file may be a moment
		// behind (events of other keys run in parallel): look again
		// before refusing.
		return bus.RetryAfter(r, time.Duration(m.Delivery)*300*time.Millisecond)
	}
	return err
}

// notFoundDeliveries is how many deliveries of a declaration wait for its
// class and image to appear before it is refused.
const notFoundDeliveries = 4

// admit applies a declaration, stored at seq in stream VMS (0: none, a
// re-admission of the record's own spec), to the VM's record.
func (c *Controller) admit(ctx context.Context, cause *event.Event, seq uint64, ns string, meta events.NamespacedMeta, spec events.VirtualMachineSpec) error {
	class, _, err := c.classes.Get(ctx, spec.ClassName)
	if err != nil {
		return err
	}
	if class == nil {
		return refuse(ReasonNotFound, "spec.className", "spec.className: VirtualMachineClass %q not found; declare it first", spec.ClassName)
	}
	img, _, err := c.images.Get(ctx, spec.ImageName)
	if err != nil {
		return err
	}
	if img == nil {
		return refuse(ReasonNotFound, "spec.imageName", "spec.imageName: VirtualMachineImage %q not found; declare it first", spec.ImageName)
	}
	size := class.Class.Size()
	key := events.VMRecordKey(ns, meta.Name)
	var changed, superseded bool
	rec, err := c.vms.Upsert(ctx, key, func(r *events.VMRecord, exists bool) error {
		now := c.now().UTC()
		if !exists {
			*r = events.VMRecord{Namespace: ns, Name: meta.Name,
				UID:       uuid.NewSHA1(uidNamespace, []byte(ns+"/"+meta.Name+"\x00"+cause.ID())).String(),
				CreatedAt: now}
			r.Status = events.VirtualMachineStatus{Phase: events.VMPhasePending, IPs: []string{}}
		}
		if !r.DeletionRequestedAt.IsZero() {
			return refuse("Deleting", "metadata.name", "VM %s is being deleted; declare it again once it is gone", r.Key())
		}
		if exists && seq != 0 && r.DeclaredSeq > seq {
			// Stored before the declaration the record holds and
			// delivered after it (a redelivery, a replay): the newer
			// spec stands.
			superseded = true
			return record.ErrUnchanged
		}
		if exists {
			// Refused before anything is recorded or touched (a shrunk
			// disk): the VM stays as its last declaration made it.
			if err := spec.ChangeRefused(r.Spec); err != nil {
				return bus.Permanent(fmt.Errorf("VM %s: %w", r.Key(), err))
			}
		}
		if exists && reflect.DeepEqual(r.Spec, spec) && r.Size == size && reflect.DeepEqual(r.Labels, meta.Labels) &&
			reflect.DeepEqual(r.Annotations, meta.Annotations) {
			return record.ErrUnchanged
		}
		changed = !exists || !reflect.DeepEqual(r.Spec, spec) || r.Size != size
		r.Labels, r.Annotations = meta.Labels, meta.Annotations
		r.DeclaredSeq = max(r.DeclaredSeq, seq) // deletes stored before it are older (onDeleteRequested)
		if changed {
			r.Generation++
			if r.Image.OCI != img.Image.Spec.OCI {
				r.ImageDigest = "" // the digest of the reference before: the new one is resolved afresh
			}
			r.Spec, r.Size, r.Image = spec, size, img.Image.Spec
			r.Status.Generation = r.Generation
			r.SetCondition(events.VMConditionAccepted, events.ConditionTrue, "", fmt.Sprintf("generation %d", r.Generation), now)
			if r.Status.Phase == events.VMPhaseReady || r.Status.Phase == events.VMPhaseFailed {
				r.Status.Phase = events.VMPhaseUpdating
			}
		}
		r.UpdatedAt = now
		return nil
	})
	if err != nil {
		return err
	}
	if superseded {
		c.log.Info("declaration stored before the one the VM holds; the newer spec stands", "vm", key, "seq", seq)
	}
	if rec == nil || !changed {
		return nil
	}
	if err := c.out.Emit(ctx, cause, &events.VMAccepted{VMRef: events.VMRef{Namespace: ns, Name: meta.Name, UID: rec.UID}, Generation: rec.Generation,
		Spec: rec.Spec, Size: rec.Size, Labels: rec.Labels}, bus.Distinct(fmt.Sprint(rec.Generation))); err != nil {
		return err
	}
	c.publishStatus(ctx, cause, rec)
	// A change that needs no new placement (power state, user data) is
	// applied as soon as the placement of the earlier generation stands:
	// the scheduler confirms it with vm.scheduled for this generation.
	return nil
}

// redeclare re-admits a VM with its own spec (its class changed size).
func (c *Controller) redeclare(ctx context.Context, cause *event.Event, ns, name string) error {
	unlock := c.locks.Lock(events.PodKey(ns, name))
	defer unlock()
	rec, _, err := c.vms.Get(ctx, events.VMRecordKey(ns, name))
	if err != nil || rec == nil {
		return err
	}
	err = c.admit(ctx, cause, 0, ns, events.NamespacedMeta{Name: name, Namespace: ns, Labels: rec.Labels, Annotations: rec.Annotations}, rec.Spec)
	var r *refusal
	if errors.As(err, &r) {
		return nil // the class or image went away meanwhile: nothing to follow
	}
	return err
}

func (c *Controller) declareFailed(ctx context.Context, m *bus.Message, e *events.VMDeclared, err error) error {
	return c.reject(ctx, &m.Event, events.KindVirtualMachine, e.VM.Namespace(), e.VM.Metadata.Name, err)
}

// mutateVM applies change to a VM record of uid; a record that is gone or
// belongs to another uid is left alone (nil, nil).
func (c *Controller) mutateVM(ctx context.Context, ns, name, uid string, change func(r *events.VMRecord) error) (*events.VMRecord, error) {
	rec, err := c.vms.Mutate(ctx, events.VMRecordKey(ns, name), func(r *events.VMRecord) error {
		if r.UID != uid {
			return record.ErrUnchanged
		}
		if err := change(r); err != nil {
			return err
		}
		r.UpdatedAt = c.now().UTC()
		return nil
	})
	if errors.Is(err, record.ErrNotFound) {
		return nil, nil
	}
	if err != nil || rec == nil || rec.UID != uid {
		return nil, err
	}
	return rec, nil
}

func (c *Controller) onScheduled(ctx context.Context, m *bus.Message, e *events.VMScheduled) error {
	unlock := c.locks.Lock(e.ObjectKey())
	defer unlock()
	rec, err := c.mutateVM(ctx, e.Namespace, e.Name, e.UID, func(r *events.VMRecord) error {
		if e.Generation < r.ScheduledGeneration {
			return record.ErrUnchanged
		}
		r.ScheduledGeneration = e.Generation
		if r.Status.Host != "" && r.Status.Host != e.Host && r.Status.VM != "" {
			// Placed elsewhere than where the VM is (after an eviction
			// the VM is re-created there).
			r.Status.VM = ""
		}
		r.Status.Host, r.Cluster, r.ResourcePool, r.Datastores = e.Host, e.Cluster, e.ResourcePool, e.Datastores
		r.SetCondition(events.VMConditionScheduled, events.ConditionTrue, "", "on "+e.Host, c.now().UTC())
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	return c.converge(ctx, &m.Event, rec)
}

// createGaveUp is the failure hook of the routes that converge a VM: once
// its last delivery failed nothing redelivers it, so a VM whose create
// failed is recorded Failed (giveUpCreate) rather than left Creating.
// Other failures keep their outcome (ErrNoFailureEvent): a permanent one
// was recorded by converge, an update's is taken up by the drift repair
// (updatingStuck).
func (c *Controller) createGaveUp(ctx context.Context, m *bus.Message, ref events.VMRef) error {
	if !m.LastDelivery() {
		return bus.ErrNoFailureEvent
	}
	unlock := c.locks.Lock(ref.ObjectKey())
	defer unlock()
	note := fmt.Sprintf("not retried after %d deliveries; the drift repair tries again", m.Delivery)
	switch ok, err := c.giveUpCreate(ctx, &m.Event, ref.Namespace, ref.Name, ref.UID, note); {
	case err != nil:
		return err
	case !ok:
		return bus.ErrNoFailureEvent
	}
	return nil
}

func (c *Controller) onUnschedulable(ctx context.Context, m *bus.Message, e *events.VMUnschedulable) error {
	rec, err := c.mutateVM(ctx, e.Namespace, e.Name, e.UID, func(r *events.VMRecord) error {
		if !r.SetCondition(events.VMConditionScheduled, events.ConditionFalse, "Unschedulable", e.Message, c.now().UTC()) {
			return record.ErrUnchanged
		}
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	c.publishStatus(ctx, &m.Event, rec)
	return nil
}

func (c *Controller) onNetworkAttached(ctx context.Context, m *bus.Message, e *events.VMNetworkAttached) error {
	unlock := c.locks.Lock(e.ObjectKey())
	defer unlock()
	rec, err := c.mutateVM(ctx, e.Namespace, e.Name, e.UID, func(r *events.VMRecord) error {
		if e.Generation < r.AttachedGeneration {
			return record.ErrUnchanged
		}
		r.AttachedGeneration = e.Generation
		r.Status.NICs = e.Attachments
		r.SetCondition(events.VMConditionNetworkAttached, events.ConditionTrue, "", "", c.now().UTC())
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	return c.converge(ctx, &m.Event, rec)
}

func (c *Controller) onNetworkFailed(ctx context.Context, m *bus.Message, e *events.VMNetworkFailed) error {
	rec, err := c.mutateVM(ctx, e.Namespace, e.Name, e.UID, func(r *events.VMRecord) error {
		r.SetCondition(events.VMConditionNetworkAttached, events.ConditionFalse, e.Reason, e.Message, c.now().UTC())
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	c.publishStatus(ctx, &m.Event, rec)
	return nil
}

func (c *Controller) onDeleteRequested(ctx context.Context, m *bus.Message, e *events.VMDeleteRequested) error {
	unlock := c.locks.Lock(e.ObjectKey())
	defer unlock()
	key := events.VMRecordKey(e.Namespace, e.Name)
	rec, _, err := c.vms.Get(ctx, key)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("VirtualMachine %s/%s not found", e.Namespace, e.Name)
	if rec != nil && m.StreamSeq != 0 && rec.DeclaredSeq > m.StreamSeq {
		// Stored before the declaration the record holds now: about an
		// earlier VM of the name (this delete delivered again once that
		// VM was gone and the name declared anew), or outdone by a
		// declaration stored after it. Either way the VM stays.
		m.Log.Info("delete stored before the VM's declaration; it was about an earlier VM of the name: nothing deleted",
			"uid", rec.UID, "declared_seq", rec.DeclaredSeq, "delete_seq", m.StreamSeq)
		msg = fmt.Sprintf("VirtualMachine %s/%s was declared again (uid %s) after this delete: nothing deleted", e.Namespace, e.Name, rec.UID)
		rec = nil
	}
	if rec == nil {
		// The drift repair (or this request's earlier delivery) may have
		// finished the delete: its vm.deleted follows the request, and
		// the VM was there to delete.
		if done, err := bus.StoredAfter[events.VMDeleted](ctx, c.bus.JetStream(), e.ObjectKey(), m.StreamSeq, nil); err != nil || done != nil {
			return err
		}
		return c.reject(ctx, &m.Event, events.KindVirtualMachine, e.Namespace, e.Name, &refusal{ReasonNotFound, "name", msg})
	}
	rec, err = c.mutateVM(ctx, e.Namespace, e.Name, rec.UID, func(r *events.VMRecord) error {
		if r.DeletionRequestedAt.IsZero() {
			r.DeletionRequestedAt = c.now().UTC()
		}
		r.Status.Phase = events.VMPhaseDeleting
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	_, err = c.finishDelete(ctx, &m.Event, rec)
	return err
}

// finishDelete destroys the VM of a record marked Deleting, removes the
// record and announces vm.deleted; it says whether it removed the record.
// The delete handler and the drift repair (Resync) both take these steps,
// on any replica and at the same time too: a VM already destroyed counts
// as destroyed, the record goes only while it is still this VM's (by
// compare-and-set: a VM declared again since has another uid), and
// vm.deleted has one id per VM (deletedCause), so the stream keeps one copy
// whoever announces it, and announces it after the record is gone (a guest
// cluster declares its worker again on it).
func (c *Controller) finishDelete(ctx context.Context, from *event.Event, rec *events.VMRecord) (bool, error) {
	if err := c.destroy(ctx, rec); err != nil {
		return false, err
	}
	removed, err := c.vms.DeleteIf(ctx, events.VMRecordKey(rec.Namespace, rec.Name), func(r *events.VMRecord) bool {
		return r.UID == rec.UID && !r.DeletionRequestedAt.IsZero()
	})
	if err != nil {
		return false, err
	}
	// Not removed here: another replica, or the handler, removed it and
	// announces it too; announcing it again costs nothing (same id) and
	// covers one that died before it did.
	return removed, c.out.Emit(ctx, deletedCause(rec, from), &events.VMDeleted{VMRef: events.VMRef{Namespace: rec.Namespace, Name: rec.Name, UID: rec.UID},
		Host: rec.Status.Host, IPs: rec.IPs()})
}

// deletedCause is the cause of a VM's vm.deleted, the same whoever finishes
// the delete: its id names the VM's uid, and it carries the trace of the
// delete request when there is one.
func deletedCause(rec *events.VMRecord, from *event.Event) *event.Event {
	c := event.New()
	c.SetID("vm/" + rec.UID + "/deleted")
	if from != nil {
		for _, ext := range []string{bus.ExtTraceparent, bus.ExtTracestate} {
			if v, ok := from.Extensions()[ext]; ok {
				c.SetExtension(ext, v)
			}
		}
	}
	return &c
}

// onEvicted: the VM's host is gone; it waits for a new placement (the
// scheduler places it again) and is re-created there.
func (c *Controller) onEvicted(ctx context.Context, m *bus.Message, e *events.VMEvicted) error {
	unlock := c.locks.Lock(e.ObjectKey())
	defer unlock()
	rec, err := c.mutateVM(ctx, e.Namespace, e.Name, e.UID, func(r *events.VMRecord) error {
		if r.Status.Host != e.Host {
			return record.ErrUnchanged
		}
		r.StaleVM, r.StaleHost = r.Status.VM, r.Status.Host
		r.Status.VM, r.Status.Host, r.Status.PowerState = "", "", ""
		r.Status.Phase = events.VMPhasePending
		r.SetCondition(events.VMConditionScheduled, events.ConditionFalse, e.Reason, e.Message, c.now().UTC())
		guestGone(r, c.now().UTC())
		return nil
	})
	if err != nil || rec == nil {
		return err
	}
	c.publishStatus(ctx, &m.Event, rec)
	return nil
}

// publishStatus announces the record's status; a failed publish is logged
// (the record holds the truth).
func (c *Controller) publishStatus(ctx context.Context, cause *event.Event, r *events.VMRecord) {
	st := r.Status
	st.UID = r.UID
	if st.IPs == nil {
		st.IPs = []string{}
	}
	// What the guest has of each NIC is part of what changed: a NIC
	// attached, configured at a boot.
	var nics strings.Builder
	for _, in := range st.Network.Interfaces {
		fmt.Fprintf(&nics, "%s:%t:%s,", in.MACAddr, in.Attached, in.Reason)
	}
	disc := fmt.Sprintf("%d/%s/%s/%s/%v/%d/%s", r.Generation, st.Phase, st.PowerState, st.Host, st.IPs, len(st.Conditions), nics.String())
	if err := c.out.Emit(ctx, cause, &events.VMStatusChanged{Namespace: r.Namespace, Name: r.Name, Status: st}, bus.Distinct(disc)); err != nil {
		c.log.Warn("publish vm status", "vm", r.Key(), "err", err)
	}
}
