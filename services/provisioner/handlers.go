package provisioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// maxCASAttempts bounds the read-modify-write loop on a record. Conflicts
// only come from drift repair or a second replica, so a few tries suffice;
// past that the event is retried by the bus.
const maxCASAttempts = 5

// routes are the provisioner's handlers. Each event is a fact about a pod:
// it is folded into the pod's record, then the record is reconciled —
// whatever the event was, the provisioner converges vCenter towards the
// record (level-triggered), so a lost or reordered event delays a pod but
// never leaves it wrong. A request that fails decoding or validation is
// answered with pod.rejected (OnInvalid); a vSphere step that fails for
// good, or until the deliveries run out, fails the pod through the failure
// hook (gaveUp).
func (s *Service) routes() *bus.Router {
	r := bus.NewRouter(Name, s.log)
	bus.Handle(r, func(ctx context.Context, m *bus.Message, p *events.PodRequested) error {
		s.annotate(ctx, m)
		unlock := s.locks.Lock(m.Key)
		defer unlock()
		return s.admit(ctx, m, p)
	}).OnInvalid(s.rejectInvalid)
	podRoute(s, r, handling.deleteRequested).OnInvalid(s.rejectInvalid)
	podRoute(s, r, func(h handling, ctx context.Context, p *events.PodScheduled) error {
		return h.fact(ctx, p.Namespace, p.Name, p.UID, func(r *events.PodRecord) bool { return s.applyScheduled(r, p) })
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.PodUnschedulable) error {
		return h.fact(ctx, p.Namespace, p.Name, p.UID, func(r *events.PodRecord) bool { return s.applyUnschedulable(r, p) })
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.PodImagesReady) error {
		return h.fact(ctx, p.Namespace, p.Name, p.UID, func(r *events.PodRecord) bool { return s.applyImagesReady(r, p) })
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.PodNetworkAttached) error {
		return h.fact(ctx, p.Namespace, p.Name, p.UID, func(r *events.PodRecord) bool { return s.applyNetworkAttached(r, p) })
	})
	podRoute(s, r, handling.imagesRetrying)
	podRoute(s, r, func(h handling, ctx context.Context, p *events.PodImagesFailed) error {
		return h.failed(ctx, p.Namespace, p.Name, p.UID, ReasonImagesFailed,
			fmt.Sprintf("image %s of container %s: %s: %s", p.Image, p.Container, p.Reason, p.Message), "")
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.PodNetworkFailed) error {
		if p.Host != "" && events.HostSpecificNetworkReason(p.Reason) {
			return h.networkRefused(ctx, p)
		}
		return h.failed(ctx, p.Namespace, p.Name, p.UID, ReasonNetworkFailed,
			fmt.Sprintf("network %s: %s: %s", p.Network, p.Reason, p.Message), p.Host)
	})
	podRoute(s, r, handling.evicted)
	podRoute(s, r, handling.containersReported)
	podRoute(s, r, func(h handling, ctx context.Context, p *events.MigrationProgress) error {
		ended, err := s.migrationEnded(ctx, p)
		if err != nil {
			return err
		}
		if ended {
			h.log.Info("late migration progress ignored: its migration has ended", "migration", p.ID, "phase", p.Phase)
			return nil
		}
		return h.fact(ctx, p.Namespace, p.Pod, "", func(r *events.PodRecord) bool { return s.applyMigrationProgress(r, p) })
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.MigrationCompleted) error {
		return h.fact(ctx, p.Namespace, p.Pod, p.UID, func(r *events.PodRecord) bool { return s.applyMigrationCompleted(r, p) })
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.MigrationFailed) error {
		return h.fact(ctx, p.Namespace, p.Pod, p.UID, func(r *events.PodRecord) bool { return s.applyMigrationEnded(r, p.ID) })
	})
	podRoute(s, r, func(h handling, ctx context.Context, p *events.MigrationCancelled) error {
		return h.fact(ctx, p.Namespace, p.Pod, p.UID, func(r *events.PodRecord) bool { return s.applyMigrationEnded(r, p.ID) })
	})
	return r
}

// podRoute registers h for the events whose payload is T, run under the
// pod's lock (drift repair touches records too), with the failure hook
// that fails the pod the event is about (or records its delete stalled).
func podRoute[T any, P interface {
	*T
	events.Payload
}](s *Service, r *bus.Router, h func(handling, context.Context, *T) error) *bus.Route[T] {
	return bus.Handle[T, P](r, func(ctx context.Context, m *bus.Message, p *T) error {
		s.annotate(ctx, m)
		unlock := s.locks.Lock(m.Key)
		defer unlock()
		return h(handling{s: s, ev: m.Event, log: m.Log, delivery: m.Delivery, seq: m.StreamSeq, stored: m.Published}, ctx, p)
	}).OnFailure(func(ctx context.Context, m *bus.Message, p *T, err error) error {
		unlock := s.locks.Lock(m.Key)
		defer unlock()
		return s.gaveUp(ctx, m, P(p).ObjectKey(), err)
	})
}

// annotate puts the attributes `podvisor trace pod` looks for on the
// consumer's span.
func (s *Service) annotate(ctx context.Context, m *bus.Message) {
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("podvisor.service", Name), attribute.String("pod", m.Key))
}

// handling is one delivery being handled.
type handling struct {
	s        *Service
	ev       event.Event
	log      interface{ Info(string, ...any) }
	delivery uint64
	// seq is where the stream stored the event (0: not from a stream).
	seq uint64
	// stored is when the stream stored it.
	stored time.Time
}

// fact folds an event into the record of its pod and reconciles. Events
// about a pod that does not exist (deleted meanwhile) or about an earlier
// pod of the same name (another uid) are acknowledged and ignored.
func (h handling) fact(ctx context.Context, ns, name, uid string, apply func(*events.PodRecord) bool) error {
	reserved, changed := false, false
	r, err := h.s.mutate(ctx, events.PodRecordKey(ns, name), uid, func(r *events.PodRecord) bool {
		changed = apply(r)
		reserved = changed && beginProvisioning(r)
		return changed
	})
	if errors.Is(err, errNoRecord) {
		// Either the pod is gone (deleted meanwhile: the fact no longer
		// matters) or the read was answered by a KV replica that has not
		// caught up with the record's creation (a NATS node back from a
		// restart). Ignoring the fact then would lose it for good: the
		// pod would wait for it forever. So it is read again on the next
		// deliveries, and only then taken for a pod that is gone.
		last := factNotFoundDeliveries
		if m := h.s.cfg.MaxAttempts; m > 0 && m < last {
			last = m // the last delivery must not fail: nothing is left to fail
		}
		if h.delivery < uint64(last) {
			return fmt.Errorf("record %s not found (a replica that lags, or the pod is gone): reading again", events.PodRecordKey(ns, name))
		}
		h.log.Info("fact about a pod without a record ignored", "key", events.PodRecordKey(ns, name), "uid", uid, "delivery", h.delivery)
		return nil
	}
	if err != nil {
		return err
	}
	if r == nil {
		h.log.Info("fact about an earlier pod of the name ignored", "key", events.PodRecordKey(ns, name), "uid", uid, "fact", h.ev.Type())
		return nil
	}
	// What a stuck pod was told, and when: a fault run's logs show which
	// fact never came (or came and changed nothing).
	h.log.Info("fact folded", "key", r.Key(), "uid", r.UID, "fact", h.ev.Type(), "event", h.ev.ID(), "changed", changed,
		"revision", r.ResourceVersion, "phase", r.Phase, "missing", strings.Join(missingFacts(r), ","))
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("pod.uid", r.UID))
	return h.s.reconcileOutcome(ctx, r, reserved)
}

// factNotFoundDeliveries is the delivery of a fact from which a record not
// found is taken for a pod that is gone (fact): with the default back-off,
// 1 + 2 + 5 s of reading again first.
const factNotFoundDeliveries = 4

// errNoRecord: the record was not found (mutate).
var errNoRecord = errors.New("pod record not found")

// mutate is the read-modify-write loop on one record. It returns nil and
// no error when the record belongs to another uid, and errNoRecord when it
// does not exist.
//
// It starts from the record as this process last wrote it, when it kept
// it (records.written), without reading: a write at that revision succeeds
// only if nobody changed the record since. Whatever does not end in such a
// write (no change to make, another uid, a lost compare-and-set) is decided
// again on a fresh read.
func (s *Service) mutate(ctx context.Context, key, uid string, apply func(*events.PodRecord) bool) (*events.PodRecord, error) {
	if r, _ := s.recs.lastWritten(key); r != nil && (uid == "" || r.UID == uid) && apply(r) {
		err := s.recs.update(ctx, r)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, errConflict) {
			return nil, err
		}
		// Changed since: the fact is folded into a fresh read below.
	}
	for range maxCASAttempts {
		r, err := s.recs.get(ctx, key)
		if err != nil {
			return nil, err
		}
		if r == nil {
			return nil, errNoRecord
		}
		if uid != "" && r.UID != uid {
			return nil, nil
		}
		if !apply(r) {
			return r, nil
		}
		err = s.recs.update(ctx, r)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return r, nil
	}
	return nil, fmt.Errorf("record %s: %w %d times in a row", key, errConflict, maxCASAttempts)
}

// save writes r (already modified by the caller) by compare-and-set.
func (s *Service) save(ctx context.Context, r *events.PodRecord) error {
	return s.recs.update(ctx, r)
}

// admit handles pod.requested: validate (done by Decode), then create the
// record with a KV Create so that two requests for one name cannot both win.
//
// The request is identified by its CloudEvent id and its stream sequence:
// a redelivery of the stored message (a crash before the ack) has both the
// same and finishes the earlier admission, while the same event published
// again later (a client re-sending it after the pod was deleted) is a new
// message and so a new admission, with a new uid and new effect ids that
// the stream's de-duplication window does not drop.
//
// A delete of the pod stored after the request outranks it: the request
// delivered again once the delete is done (its handler died or stalled past
// AckWait, or it was retried) admits nothing, so the pod does not come back
// (superseded). Only a request that may be stale asks, and only when it
// would create the pod: while a record stands, the delete (if any) is still
// to come and removes what this admits.
func (s *Service) admit(ctx context.Context, m *bus.Message, req *events.PodRequested) error {
	ev, seq, log := m.Event, m.StreamSeq, m.Log
	pod := req.Pod.DeepCopy()
	events.NormalizePod(pod)
	requestID := fmt.Sprintf("%s#%d", ev.ID(), seq)
	admission := ev.Clone()
	admission.SetID(requestID)
	uid := podUID(req, requestID)
	pod.UID = types.UID(uid)
	hash, err := specHash(pod)
	if err != nil {
		return bus.Permanent(err)
	}
	key := events.PodRecordKey(pod.Namespace, pod.Name)
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("pod.uid", uid))

	r := &events.PodRecord{
		UID:       uid,
		Namespace: pod.Namespace,
		Name:      pod.Name,
		Pod:       *pod,
		SpecHash:  hash,
		RequestID: requestID,
		Size:      events.SizePodVM(pod),
		Networks:  events.PodNetworks(pod),
		Phase:     events.PodPhasePending,
		VMName:    vmName(uid, 0),
	}
	if tp, ok := ev.Extensions()[bus.ExtTraceparent].(string); ok {
		r.TraceParent = tp
	}
	if s.mayBeStale(m) {
		if cur, err := s.recs.get(ctx, key); err != nil {
			return err
		} else if cur == nil {
			if over, err := s.superseded(ctx, m, req.ObjectKey(), uid); err != nil || over {
				return err
			}
		}
	}
	// Create first, read only when the name is taken: nearly every request
	// is for a new pod, and the KV Create is the check that two requests
	// for one name cannot both win, which a read before it could not be.
	for range maxCASAttempts {
		r.SetCondition(events.PodConditionAccepted, events.ConditionTrue, "Admitted", "manifest valid, record created", s.now().UTC())
		err := s.recs.create(ctx, r)
		if err == nil {
			log.Info("pod admitted", "uid", uid, "cpuMilli", r.Size.CPUMilli, "memoryMiB", r.Size.MemoryMiB)
			return s.announceAccepted(ctx, admission, r)
		}
		if !errors.Is(err, errConflict) {
			return err
		}
		existing, err := s.recs.get(ctx, key)
		if err != nil {
			return err
		}
		switch {
		case existing == nil:
			// Removed since the create was refused: a delete finished
			// meanwhile (drift repair's, another replica's), maybe one
			// stored after this request, which then outranks it. Rare, so
			// asked whatever the delivery.
			if over, err := s.superseded(ctx, m, req.ObjectKey(), uid); err != nil || over {
				return err
			}
			continue
		case existing.RequestID == requestID:
			// Our own earlier attempt got as far as the record: finish
			// it. The accepted event gets the same id and JetStream
			// keeps one copy.
			return s.announceAccepted(ctx, admission, existing)
		case !existing.DeletionRequestedAt.IsZero():
			return s.reject(ctx, ev, pod.Namespace, pod.Name, "", events.ReasonAlreadyExists,
				fmt.Sprintf("pod %s (uid %s) is being deleted; request it again once it is gone", existing.Key(), existing.UID), "")
		case existing.SpecHash == hash:
			log.Info("identical pod already admitted; nothing to do", "uid", existing.UID)
			return nil
		default:
			msg := fmt.Sprintf("pod %s already exists (uid %s) with a different spec; pods are immutable: delete it first", existing.Key(), existing.UID)
			return s.reject(ctx, ev, pod.Namespace, pod.Name, "", events.ReasonAlreadyExists, msg, "")
		}
	}
	return fmt.Errorf("admit %s: %w", key, errConflict)
}

// firstDeliveryFresh is how old a request's first delivery may be and
// still be taken for fresh (mayBeStale). A first delivery comes within
// milliseconds of the store, within seconds behind a burst. One older was
// stored before this durable delivered it: the bus recreated the durable
// after it disappeared and it starts again from the stream's first event,
// or a new durable was declared; either may come after the pod's whole
// life, its delete included. The bound leans to asking: a request that
// waited longer behind a burst costs a read or two. What it lets through
// is a replay reaching a request younger than the bound whose pod was
// admitted and deleted within that time. Published is the server's clock
// and now this process's: their skew moves the bound by as much.
const firstDeliveryFresh = 5 * time.Second

// mayBeStale reports whether a delivery of pod.requested may come after
// the delete of the pod it made: a redelivery (its handler died, stalled
// past AckWait or was retried, or a draining replica handed it back), or a
// first delivery older than firstDeliveryFresh. A fresh first delivery
// cannot: for a delete to have removed this request's pod, an earlier
// delivery must have admitted it, and the durable counts that one. It
// asks nothing, and it is nearly every request: the pipeline admits
// hundreds of pods a second, and the walk costs round trips.
func (s *Service) mayBeStale(m *bus.Message) bool {
	return m.StreamSeq != 0 && (m.Delivery > 1 || s.now().Sub(m.Published) > firstDeliveryFresh)
}

// superseded reports whether a delete of the pod podKey
// (<namespace>/<name>) stored after the request m outranks it
// (bus.StoredAfter), and says so. A delete whose uid precondition names
// another pod spared this one: only one without a uid, or with the uid
// this request makes, counts.
func (s *Service) superseded(ctx context.Context, m *bus.Message, podKey, uid string) (bool, error) {
	d, err := bus.StoredAfter(ctx, s.bus.JetStream(), podKey, m.StreamSeq, func(d *events.PodDeleteRequested) bool {
		return d.UID == "" || d.UID == uid
	})
	if err != nil || d == nil {
		return false, err
	}
	m.Log.Info("request superseded by a later delete of the pod; nothing admitted", "uid", uid, "seq", m.StreamSeq,
		"delete_seq", d.Sequence, "delete_stored", d.Time)
	return true, nil
}

func (s *Service) announceAccepted(ctx context.Context, cause event.Event, r *events.PodRecord, opts ...bus.EmitOption) error {
	return s.out.Emit(ctx, &cause, &events.PodAccepted{
		PodRef:   events.PodRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID},
		Pod:      r.Pod,
		Size:     r.Size,
		Networks: r.Networks,
		Images:   events.PodImages(&r.Pod),
	}, opts...)
}

// reject publishes pod.rejected as the effect of a request.
func (s *Service) reject(ctx context.Context, cause event.Event, ns, name, uid, reason, message, fieldPath string) error {
	if ns == "" {
		ns = events.DefaultNamespace
	}
	return s.out.Emit(ctx, &cause, &events.PodRejected{
		Namespace: ns, Name: name, UID: uid, Reason: reason, Message: message, Field: fieldPath,
	})
}

// rejectInvalid answers a request that failed decoding or validation. The
// pod's namespace and name are read leniently from the payload, so the
// client waiting for an answer about that pod gets one.
func (s *Service) rejectInvalid(ctx context.Context, m *bus.Message, cause error) error {
	ev := m.Event
	var loose struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		UID       string `json:"uid"`
		Pod       struct {
			Metadata struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"metadata"`
		} `json:"pod"`
	}
	_ = json.Unmarshal(ev.Data(), &loose)
	ns, name := loose.Namespace, loose.Name
	if ev.Type() == events.TypePodRequested {
		ns, name = loose.Pod.Metadata.Namespace, loose.Pod.Metadata.Name
	}
	if ns == "" || len(validation.IsDNS1123Label(ns)) > 0 {
		ns = events.DefaultNamespace
	}
	if len(validation.IsDNS1123Subdomain(name)) > 0 {
		name = ""
	}
	uid := loose.UID
	if len(uid) > 128 || strings.ContainsAny(uid, " /*>") {
		uid = ""
	}
	fieldPath := ""
	var ve *events.ValidationError
	if errors.As(cause, &ve) {
		fieldPath = ve.Field()
	}
	var de *events.DecodeError
	if fieldPath == "" && errors.As(cause, &de) {
		fieldPath = de.Field
	}
	msg := cause.Error()
	if len(msg) > 4000 {
		msg = msg[:4000] + "…"
	}
	err := s.reject(ctx, ev, ns, name, uid, events.ReasonInvalid, msg, fieldPath)
	if err != nil && uid != "" {
		// The uid itself may be what is wrong: answer without it.
		err = s.reject(ctx, ev, ns, name, "", events.ReasonInvalid, msg, fieldPath)
	}
	return err
}

// recordCause is the cause of events the provisioner publishes from a
// record rather than in answer to one event (pod.running, pod.failed,
// pod.deleted): its id is fixed per pod and placement, so whichever event
// or repair triggers the announcement, and however often, JetStream stores
// it once; its traceparent is the pod request's, so it joins the pod's trace.
func recordCause(r *events.PodRecord) *event.Event {
	c := event.New()
	c.SetID(fmt.Sprintf("pod/%s/g%d", r.UID, r.Generation))
	if r.TraceParent != "" {
		c.SetExtension(bus.ExtTraceparent, r.TraceParent)
	}
	return &c
}

// applyScheduled binds the pod to a host. A binding for a pod that already
// has a VM on another host is stale (an earlier placement) and ignored.
func (s *Service) applyScheduled(r *events.PodRecord, p *events.PodScheduled) bool {
	if !r.DeletionRequestedAt.IsZero() || r.Phase == events.PodPhaseFailed {
		return false
	}
	refused := s.applyRefusals(r, p.Refusals)
	if r.Host == p.Host && r.Cluster == p.Cluster && r.ResourcePool == p.ResourcePool && slices.Equal(r.Datastores, p.Datastores) {
		return refused
	}
	if r.Host != "" && (r.VMRef != "" || r.CreateTask != "") {
		return refused
	}
	r.Host, r.Cluster, r.ResourcePool = p.Host, p.Cluster, p.ResourcePool
	r.Datastores = slices.Clone(p.Datastores)
	if r.Phase == events.PodPhasePending {
		r.Phase = events.PodPhaseScheduled
	}
	if r.Reason == ReasonUnschedulable || r.Reason == ReasonNetworkRefused {
		r.Reason, r.Message = "", ""
	}
	r.SetCondition(events.PodConditionScheduled, events.ConditionTrue, "Bound", "bound to host "+p.Host+" in "+p.Cluster, s.now().UTC())
	return true
}

// applyRefusals keeps the hosts that refused the pod's networks on the
// record and its NetworkRefused condition (reason: the first refusal's).
func (s *Service) applyRefusals(r *events.PodRecord, rs []events.HostRefusal) bool {
	if !r.AddNetworkRefusals(rs) {
		return false
	}
	r.SetCondition(events.PodConditionNetworkRefused, events.ConditionTrue, r.NetworkRefusals[0].Reason, r.NetworkRefusalMessage(), s.now().UTC())
	return true
}

// networkRefused handles a pod.network.failed whose reason is about the
// host (events.HostSpecificNetworkReason): the refusal is kept, and the pod
// goes back to Pending without a host so that the scheduler places it on
// another one, until events.MaxNetworkRefusals hosts refused; then the pod
// fails as for any other network failure.
func (h handling) networkRefused(ctx context.Context, p *events.PodNetworkFailed) error {
	s := h.s
	r, err := s.recs.get(ctx, events.PodRecordKey(p.Namespace, p.Name))
	if err != nil || r == nil || r.UID != p.UID {
		return err
	}
	if r.Host == p.Host && forkedEarly(r) && r.DeletionRequestedAt.IsZero() && r.Phase != events.PodPhaseFailed {
		// Forked on this host ahead of its network: the pod goes
		// elsewhere without that VM.
		if err := s.dropEarlyFork(ctx, r); err != nil {
			return err
		}
	}
	ref := events.HostRefusal{Host: p.Host, Network: p.Network, Reason: p.Reason, Message: p.Message, OnAttach: true}
	if s.applyRefusals(r, []events.HostRefusal{ref}) && r.AttachRefusals() >= events.MaxNetworkRefusals {
		if (r.Host != "" && r.Host != p.Host) || events.PodHasVM(r.Phase) || r.Phase == events.PodPhaseFailed || !r.DeletionRequestedAt.IsZero() {
			return nil
		}
		return s.fail(ctx, r, ReasonNetworkFailed, fmt.Sprintf("network %s: %d hosts refused it, the bound: %s",
			p.Network, r.AttachRefusals(), r.NetworkRefusalMessage()))
	}
	return h.fact(ctx, p.Namespace, p.Name, p.UID, func(r *events.PodRecord) bool {
		changed := s.applyRefusals(r, []events.HostRefusal{ref})
		if r.Host != p.Host || r.VMRef != "" || r.CreateTask != "" || !r.DeletionRequestedAt.IsZero() || r.Phase == events.PodPhaseFailed {
			return changed // about an earlier placement, or too late to move
		}
		r.Host, r.Cluster, r.ResourcePool, r.Datastores = "", "", "", nil
		r.NetworkHost, r.Attachments, r.IP = "", nil, ""
		r.Phase = events.PodPhasePending
		msg := fmt.Sprintf("host %s refused network %s (%s); placing the pod on another host", p.Host, p.Network, p.Reason)
		r.Reason, r.Message = ReasonNetworkRefused, msg
		r.SetCondition(events.PodConditionScheduled, events.ConditionFalse, ReasonNetworkRefused, msg, s.now().UTC())
		return true
	})
}

func (s *Service) applyUnschedulable(r *events.PodRecord, p *events.PodUnschedulable) bool {
	if r.Phase != events.PodPhasePending || !r.DeletionRequestedAt.IsZero() {
		return false
	}
	changed := r.SetCondition(events.PodConditionScheduled, events.ConditionFalse, ReasonUnschedulable, p.Message, s.now().UTC())
	if r.Reason != ReasonUnschedulable || r.Message != p.Message {
		r.Reason, r.Message = ReasonUnschedulable, p.Message
		changed = true
	}
	return changed
}

// applyImagesReady keeps the pod's images; they replace what
// pod.images.retrying said of them.
func (s *Service) applyImagesReady(r *events.PodRecord, p *events.PodImagesReady) bool {
	if !r.DeletionRequestedAt.IsZero() || r.Phase == events.PodPhaseFailed {
		return false
	}
	backedOff := r.Reason == events.ReasonImagePullBackOff
	if backedOff {
		r.Reason, r.Message = "", ""
	}
	// Keep the images in container order whatever order they came in.
	byName := map[string]events.ContainerImage{}
	for _, c := range p.Containers {
		byName[c.Container] = c
	}
	all := events.PodContainers(&r.Pod)
	imgs := make([]events.ContainerImage, 0, len(all))
	for _, c := range all {
		if img, ok := byName[c.Name]; ok {
			imgs = append(imgs, img)
		}
	}
	if imagesEqual(r.Images, imgs) {
		return backedOff
	}
	r.Images = imgs
	status, reason, msg := events.ConditionTrue, "Prepared", fmt.Sprintf("%d image disk chains ready", len(imgs))
	if len(imgs) != len(all) {
		status, reason, msg = events.ConditionFalse, "Incomplete", fmt.Sprintf("%d of %d containers have an image", len(imgs), len(all))
	}
	r.SetCondition(events.PodConditionImagesReady, status, reason, msg, s.now().UTC())
	return true
}

// imagesRetrying folds pod.images.retrying: while the pod waits for its
// images, its reason and message (and so its containers' waiting state)
// say that the image cache tries again and why, as the kubelet's
// ImagePullBackOff does, until pod.images.ready or pod.images.failed
// replaces them. It is news of a try, not a fact the pod needs: it moves
// no phase and reconciles nothing, and a pod without a record (gone, or a
// KV replica that lags) ignores it at once, as does a pod past its images
// (a late one); the next failed try tells again.
func (h handling) imagesRetrying(ctx context.Context, p *events.PodImagesRetrying) error {
	_, err := h.s.mutate(ctx, events.PodRecordKey(p.Namespace, p.Name), p.UID, func(r *events.PodRecord) bool { return applyImagesRetrying(r, p) })
	if errors.Is(err, errNoRecord) {
		h.log.Info("pod.images.retrying about a pod without a record ignored", "key", events.PodRecordKey(p.Namespace, p.Name), "uid", p.UID)
		return nil
	}
	return err
}

func applyImagesRetrying(r *events.PodRecord, p *events.PodImagesRetrying) bool {
	if (r.Phase != events.PodPhasePending && r.Phase != events.PodPhaseScheduled) || !r.DeletionRequestedAt.IsZero() ||
		!slices.Contains(missingFacts(r), factImages) {
		return false
	}
	if r.Reason == ReasonUnschedulable || r.Reason == ReasonNetworkRefused {
		return false // what the pod waits for first: a host
	}
	msg := fmt.Sprintf("Back-off pulling image %q (container %s): %s: %s (try %d", p.Image, p.Container, p.Reason, p.Message, p.Attempt)
	if !p.NextAttemptAt.IsZero() {
		msg += ", next at " + p.NextAttemptAt.UTC().Format(time.RFC3339)
	}
	msg += ")"
	if r.Reason == events.ReasonImagePullBackOff && r.Message == msg {
		return false
	}
	r.Reason, r.Message = events.ReasonImagePullBackOff, msg
	return true
}

func imagesEqual(a, b []events.ContainerImage) bool {
	return slices.EqualFunc(a, b, func(x, y events.ContainerImage) bool {
		return x.Container == y.Container && x.Digest == y.Digest && x.Datastore == y.Datastore && x.Disk == y.Disk && slices.Equal(x.Chain, y.Chain)
	})
}

func (s *Service) applyNetworkAttached(r *events.PodRecord, p *events.PodNetworkAttached) bool {
	if !r.DeletionRequestedAt.IsZero() || r.Phase == events.PodPhaseFailed {
		return false
	}
	if r.Host != "" && p.Host != r.Host {
		return false // attachments for an earlier placement
	}
	if r.NetworkHost == p.Host && slices.EqualFunc(r.Attachments, p.Attachments, events.NetworkAttachment.Equal) {
		return false
	}
	// Keep NIC order: the order of the pod's networks.
	byName := map[string]events.NetworkAttachment{}
	for _, a := range p.Attachments {
		byName[a.Network] = a
	}
	var atts []events.NetworkAttachment
	for _, n := range r.Networks {
		if a, ok := byName[n]; ok {
			atts = append(atts, a)
		}
	}
	r.NetworkHost, r.Attachments = p.Host, atts
	r.IP = ""
	if len(atts) > 0 {
		r.IP = atts[0].IP
	}
	status, reason, msg := events.ConditionTrue, "Attached", fmt.Sprintf("%d networks attached on %s", len(atts), p.Host)
	if len(atts) != len(r.Networks) {
		status, reason, msg = events.ConditionFalse, "Incomplete", fmt.Sprintf("%d of %d networks attached", len(atts), len(r.Networks))
	}
	r.SetCondition(events.PodConditionNetworkAttached, status, reason, msg, s.now().UTC())
	return true
}

// migrationEnded reports whether a progress that would put its pod in
// Migrating belongs to a migration whose record (the migration service's, the
// truth about it) is already final. The pod record remembers only the last
// migration that ended: a progress redelivered late, after that migration
// and another one both ended, would otherwise put the pod back in Migrating
// for good. A missing record is not taken as ended (the record is written
// before any progress, and it is never removed while its pod exists).
func (s *Service) migrationEnded(ctx context.Context, p *events.MigrationProgress) (bool, error) {
	if p.Phase != events.PhaseRelocating && p.Phase != events.PhaseFinalizing {
		return false, nil // applyMigrationProgress ignores these anyway
	}
	e, err := s.migs.Get(ctx, events.MigrationRecordKey(p.ID))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read migration %s: %w", p.ID, err) // retried
	}
	var m events.MigrationRecord
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		return false, nil // not the pod's fault: fold the progress as before
	}
	return events.MigrationPhaseFinal(m.Phase), nil
}

// The migration events are facts about one migration (PodRecord.Migration):
// a progress of the migration that ended last is late and changes nothing,
// and the failure or cancel of a migration other than the one the pod is
// Migrating for leaves the pod to that one.
func (s *Service) applyMigrationProgress(r *events.PodRecord, p *events.MigrationProgress) bool {
	if (r.Phase != events.PodPhaseRunning && r.Phase != events.PodPhaseStarting) || (p.Phase != events.PhaseRelocating && p.Phase != events.PhaseFinalizing) {
		return false
	}
	if r.Migration == p.ID {
		return false // it ended already
	}
	r.Phase, r.Migration = events.PodPhaseMigrating, p.ID
	r.Message = fmt.Sprintf("migration %s: %s %d%%", p.ID, p.Phase, p.Percent)
	return true
}

func (s *Service) applyMigrationCompleted(r *events.PodRecord, p *events.MigrationCompleted) bool {
	if !r.DeletionRequestedAt.IsZero() || r.Host == p.TargetHost {
		changed := r.Migration != p.ID
		r.Migration = p.ID
		if r.Phase == events.PodPhaseMigrating {
			r.Phase, r.Message = afterMigration(r), ""
			return true
		}
		return changed
	}
	r.Migration = p.ID
	r.Host, r.Cluster, r.ResourcePool = p.TargetHost, p.TargetCluster, p.TargetPool
	// network-config moves the port binding with the VM: the attachments
	// (addresses, MACs) stay what they were.
	r.NetworkHost = p.TargetHost
	if r.Phase == events.PodPhaseMigrating {
		r.Phase = afterMigration(r)
	}
	r.Message = ""
	r.SetCondition(events.PodConditionScheduled, events.ConditionTrue, "Migrated",
		fmt.Sprintf("moved from %s to %s by migration %s", p.SourceHost, p.TargetHost, p.ID), s.now().UTC())
	return true
}

func (s *Service) applyMigrationEnded(r *events.PodRecord, id string) bool {
	switch {
	case r.Phase == events.PodPhaseMigrating && r.Migration != "" && r.Migration != id:
		return false // another migration moves the pod
	case r.Phase != events.PodPhaseMigrating:
		if r.Migration == id {
			return false
		}
		r.Migration = id // so that its late progress changes nothing
		return true
	}
	r.Phase, r.Message, r.Migration = afterMigration(r), "", id
	return true
}

// afterMigration is the phase a pod returns to when its migration ends:
// Running if its guest had reported every container started, Starting
// otherwise (a pod is Migrating only from one of the two).
func afterMigration(r *events.PodRecord) string {
	if r.Guest != nil && allStarted(r) {
		return events.PodPhaseRunning
	}
	return events.PodPhaseStarting
}
