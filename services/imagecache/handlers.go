package imagecache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/chaindb"
	"github.com/podvisor/podvisor/shared/bus"
	il "github.com/podvisor/podvisor/shared/imagemeta"
)

// container is one container of a pod and its image reference.
type container struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

// routes are the service's handlers. Events of one pod never run
// concurrently (the bus keys them by pod), so accepted, scheduled and
// deleted of a pod are handled in order. An image that cannot be prepared
// (no retry can help, or the deliveries ran out) fails the pod through the
// failure hook: pod.images.failed with the reason; a try that fails with
// tries left tells the pod with pod.images.retrying (preparing).
func (s *Service) routes() *bus.Router {
	r := bus.NewRouter(Name, s.log)
	bus.Handle(r, func(ctx context.Context, m *bus.Message, p *events.PodAccepted) error {
		return s.preparing(ctx, m, p.PodRef, func(ctx context.Context) error { return s.onAccepted(ctx, m, p) })
	}).OnFailure(func(ctx context.Context, m *bus.Message, p *events.PodAccepted, err error) error {
		return s.imagesFailed(ctx, m, p.Namespace, p.Name, p.UID, err)
	})
	bus.Handle(r, func(ctx context.Context, m *bus.Message, p *events.PodScheduled) error {
		return s.preparing(ctx, m, p.PodRef, func(ctx context.Context) error { return s.onScheduled(ctx, m, p) })
	}).OnFailure(func(ctx context.Context, m *bus.Message, p *events.PodScheduled, err error) error {
		return s.imagesFailed(ctx, m, p.Namespace, p.Name, p.UID, err)
	})
	bus.Handle(r, func(ctx context.Context, _ *bus.Message, p *events.PodDeleted) error {
		s.annotate(ctx, p.Namespace, p.Name, p.UID)
		return s.onDeleted(ctx, p)
	})
	return r
}

func (s *Service) annotate(ctx context.Context, ns, name, uid string) {
	trace.SpanFromContext(ctx).SetAttributes(
		attribute.String("podvisor.service", Name),
		attribute.String("pod", events.PodKey(ns, name)),
		attribute.String("pod.uid", uid),
	)
}

// onAccepted prefetches the pod's images before any host is chosen. When
// the chains land on a datastore every host mounts, the pod's images are
// ready wherever it is scheduled and pod.images.ready goes out now;
// otherwise pod.scheduled finishes the job.
func (s *Service) onAccepted(ctx context.Context, m *bus.Message, e *events.PodAccepted) error {
	s.annotate(ctx, e.Namespace, e.Name, e.UID)
	all := events.PodContainers(&e.Pod)
	cs := make([]container, len(all))
	for i, c := range all {
		cs[i] = container{Name: c.Name, Image: c.Image}
		if i < len(e.Images) && e.Images[i] != "" {
			cs[i].Image = e.Images[i]
		}
	}
	last, err := s.rememberContainers(ctx, e.UID, cs)
	if err != nil {
		return err
	}
	// A pod announced before (this is the provisioner asking again) keeps
	// its chains where they are: preferring their datastores keeps the
	// pod's references there rather than moving them to another copy.
	_, sig := readyOrigin(last)
	cands, err := s.candidates(ctx, "", readyDatastores(sig))
	if err != nil {
		return err
	}
	preps, err := s.prepareAll(ctx, m, e.PodRef, cs, placement{candidates: cands})
	if err != nil {
		return err
	}
	if stays, err := s.podStays(ctx, m, e.Namespace, e.Name, e.UID, preps); err != nil || !stays {
		return err
	}
	var dss []string
	for _, p := range preps {
		dss = append(dss, p.datastore)
	}
	if all, err := s.visibleToAllOf(ctx, dss); err != nil || !all {
		return err
	}
	// Announced again even when the last announcement named the same
	// disks: a pod.accepted that comes again under a new id is the
	// provisioner asking again for a fact it never got (a pod Scheduled
	// too long without it), and the effect id, derived from this event's,
	// makes a redelivery of the same pod.accepted publish nothing new.
	return s.publishReady(ctx, m, e.Namespace, e.Name, e.UID, cs, preps, true)
}

// onScheduled makes sure the chosen host sees the pod's chains: a chain on
// a datastore the host does not mount is copied to one it does.
func (s *Service) onScheduled(ctx context.Context, m *bus.Message, e *events.PodScheduled) error {
	s.annotate(ctx, e.Namespace, e.Name, e.UID)
	known, err := s.podState(ctx, e.UID)
	if err != nil {
		return err
	}
	cs, err := s.containersOf(ctx, e.Namespace, e.Name, e.UID, known.containers)
	if err != nil {
		return err
	}
	if len(cs) == 0 {
		return bus.Permanent(fmt.Errorf("pod %s (uid %s): no containers known (neither in Redis nor in the pods bucket)", events.PodKey(e.Namespace, e.Name), e.UID))
	}
	cands, err := s.candidates(ctx, e.Host, e.Datastores)
	if err != nil {
		return err
	}
	// Most pods' images were announced on pod.accepted on a datastore every
	// host mounts: nothing to do then (the chains are referenced, a second
	// preparation would announce the same disks, and a pod.accepted asked
	// again is answered again by onAccepted).
	if fromAccepted, sig := readyOrigin(known.ready); fromAccepted {
		if dss := readyDatastores(sig); len(dss) > 0 && !slices.ContainsFunc(dss, func(ds string) bool { return !slices.Contains(cands, ds) }) {
			ok, err := s.referencedChainsReady(ctx, known.refs, dss)
			if err != nil {
				return err
			}
			if ok {
				return nil
			}
		}
	}
	preps, err := s.prepareAll(ctx, m, e.PodRef, cs, placement{candidates: cands, copyFrom: true})
	if err != nil {
		return err
	}
	if stays, err := s.podStays(ctx, m, e.Namespace, e.Name, e.UID, preps); err != nil || !stays {
		return err
	}
	// Announced again even when the last announcement (a pod.scheduled's)
	// named the same disks. Images on a datastore not every host mounts
	// are announced on pod.scheduled only (pod.accepted stays silent about
	// them), so a pod.scheduled that comes again under a new id — the
	// scheduler answering a pod.accepted the provisioner announced again
	// for a fact it never got — is the only way such a lost fact comes
	// back. A redelivery of the same pod.scheduled derives the same effect
	// id, so JetStream keeps one copy.
	return s.publishReady(ctx, m, e.Namespace, e.Name, e.UID, cs, preps, false)
}

// visibleToAllOf reports whether every host of the datacenter mounts each
// of dss.
func (s *Service) visibleToAllOf(ctx context.Context, dss []string) (bool, error) {
	for _, ds := range dss {
		if all, err := s.visibleToAll(ctx, ds); err != nil || !all {
			return false, err
		}
	}
	return true, nil
}

// readySignature identifies what a pod.images.ready announced: each
// container's top disk.
func readySignature(cs []container, preps map[string]prepared) string {
	var b strings.Builder
	for _, c := range cs {
		b.WriteString(c.Name + "=" + preps[c.Image].topDisk() + ";")
	}
	return b.String()
}

// acceptedMark begins the kept signature of an announcement made on
// pod.accepted (il.PodReadyKey): pod.scheduled leaves those alone, and
// answers again any it made itself.
const acceptedMark = "accepted "

// readyOrigin splits a kept announcement into whether pod.accepted made it
// and its signature.
func readyOrigin(kept string) (fromAccepted bool, sig string) {
	sig, fromAccepted = strings.CutPrefix(kept, acceptedMark)
	return fromAccepted, sig
}

// podKnown is what the image cache keeps about a pod in Redis.
type podKnown struct {
	containers []byte   // the containers as JSON (nil: not kept)
	ready      string   // the last pod.images.ready as kept (readyOrigin; "": none)
	refs       []string // the chains it references, "<chainID>@<ds>"
}

// podState reads what the image cache keeps about a pod, in one round trip
// (the keys share the pod's hash tag).
func (s *Service) podState(ctx context.Context, uid string) (podKnown, error) {
	pipe := s.db.Client().Pipeline()
	cs := pipe.Get(ctx, il.PodContainersKey(uid))
	ready := pipe.Get(ctx, il.PodReadyKey(uid))
	refs := pipe.SMembers(ctx, il.PodKey(uid))
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	for _, err := range []error{cs.Err(), ready.Err(), refs.Err()} {
		if err != nil && !errors.Is(err, redis.Nil) {
			return podKnown{}, fmt.Errorf("read what is known of pod %s: %w", uid, err)
		}
	}
	b, _ := cs.Bytes()
	return podKnown{containers: b, ready: ready.Val(), refs: refs.Val()}, nil
}

// referencedChainsReady reports whether the pod references (refs) chains
// on the datastores dss and every one of them is still ready there (a chain
// lost with its datastore since the announcement must be prepared again).
func (s *Service) referencedChainsReady(ctx context.Context, refs []string, dss []string) (bool, error) {
	var at []chaindb.ChainAt
	for _, member := range refs {
		id, ds, ok := il.ParseIndexMember(member)
		if ok && slices.Contains(dss, ds) {
			at = append(at, chaindb.ChainAt{ChainID: id, Datastore: ds})
		}
	}
	recs, found, err := s.db.GetMany(ctx, at)
	if err != nil {
		return false, err
	}
	for i := range at {
		if !found[i] || recs[i].State != events.ChainStateReady {
			return false, nil
		}
	}
	return len(at) > 0, nil
}

// readyDatastores returns the datastores of the disks a ready signature
// names ("container=[ds] path;…"); nil when one cannot be read.
func readyDatastores(sig string) []string {
	var out []string
	for entry := range strings.SplitSeq(strings.TrimSuffix(sig, ";"), ";") {
		_, disk, ok := strings.Cut(entry, "=")
		if !ok || !strings.HasPrefix(disk, "[") {
			return nil
		}
		ds, _, ok := strings.Cut(disk[1:], "]")
		if !ok || ds == "" {
			return nil
		}
		out = append(out, ds)
	}
	return out
}

// prepareAll prepares every distinct image of the pod and references the
// chains for the pod. An image that fails is returned as an imageError
// naming its container, classified (classify): the failure hook tells the
// pod when no retry can help or the deliveries ran out. A pod found being
// deleted or gone meanwhile (whilePodStays) ends the preparation with
// errPodLeaving.
func (s *Service) prepareAll(ctx context.Context, m *bus.Message, pod events.PodRef, cs []container, pl placement) (map[string]prepared, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.PrepareTimeout)
	defer cancel()
	ctx, stop := s.whilePodStays(ctx, pod)
	defer stop()
	out := map[string]prepared{}
	for _, c := range cs {
		if _, done := out[c.Image]; done {
			continue
		}
		p, err := s.prepareOne(ctx, m, pod.UID, c.Image, pl)
		switch {
		case err == nil:
			out[c.Image] = p
		case errors.Is(context.Cause(ctx), errPodLeaving):
			return nil, errPodLeaving
		case errors.Is(err, context.Canceled) && context.Cause(ctx) == context.Canceled:
			return nil, err // shutting down: someone else finishes
		case ctx.Err() != nil:
			// PrepareTimeout ran out: the pod has waited long enough.
			return nil, &imageError{c: c, err: bus.Permanent(classify(err))}
		default:
			return nil, &imageError{c: c, err: classify(err)}
		}
	}
	return out, nil
}

// preparing runs prepare, one delivery of a pod event that prepares the
// pod's images (pod.accepted, pod.scheduled), for a pod that stays:
//
//   - A delivery after the first (the pod's earlier try failed) first
//     checks that the pod still exists (podStays): a pod deleted since is
//     not prepared again, its references are dropped once it is gone.
//   - A pod found being deleted or gone while its images are prepared
//     (whilePodStays) ends its preparation there, the same way.
//   - A try that fails with tries left tells the pod (imagesRetrying).
func (s *Service) preparing(ctx context.Context, m *bus.Message, pod events.PodRef, prepare func(context.Context) error) error {
	if m.Delivery > 1 {
		if stays, err := s.podStays(ctx, m, pod.Namespace, pod.Name, pod.UID, nil); err != nil || !stays {
			return err
		}
	}
	err := prepare(ctx)
	if errors.Is(err, errPodLeaving) {
		if stays, serr := s.podStays(ctx, m, pod.Namespace, pod.Name, pod.UID, nil); serr != nil || !stays {
			return serr
		}
		return err
	}
	return s.imagesRetrying(ctx, m, pod, err)
}

// imagesRetrying tells the pod why its images are not ready yet when
// preparing them failed with an error a later try may outlive and a try is
// left: pod.images.retrying with the reason and the error pod.images.failed
// would carry, the try and when the next one is due. Without it a pod
// whose registry refuses connections would show nothing of it for the
// minutes the deliveries last. Its id derives from the event's and the
// delivery's, so a try's event is stored once however often it is
// published. The last try's failure is the failure hook's; a publish that
// fails is only logged (the next failed try tells again). It returns err.
func (s *Service) imagesRetrying(ctx context.Context, m *bus.Message, pod events.PodRef, err error) error {
	var ie *imageError
	if !errors.As(err, &ie) || bus.IsPermanent(err) || m.LastDelivery() {
		return err
	}
	delay, ok := bus.RetryDelay(err)
	if !ok {
		delay = bus.ConsumerConfig{BackOff: s.cfg.BackOff}.Backoff(m.Delivery) // as the consumer is configured
	}
	reason := bus.ReasonOf(err, ReasonImagePrepareFailed)
	m.Log.Info("pod images failed; trying again", "container", ie.c.Name, "image", ie.c.Image, "reason", reason, "err", err, "delay", delay)
	pctx, cancel := publishContext(ctx)
	defer cancel()
	if perr := s.out.Emit(pctx, &m.Event, &events.PodImagesRetrying{
		PodRef: pod, Container: ie.c.Name, Image: ie.c.Image, Reason: reason, Message: err.Error(),
		Attempt: int(m.Delivery), NextAttemptAt: s.now().Add(delay).UTC(),
	}, bus.Distinct(strconv.FormatUint(m.Delivery, 10))); perr != nil {
		m.Log.Warn("pod.images.retrying not published", "err", perr)
	}
	return err
}

// imageError names the container whose image could not be prepared.
type imageError struct {
	c   container
	err error
}

func (e *imageError) Error() string { return e.err.Error() }
func (e *imageError) Unwrap() error { return e.err }

// imagesFailed is the failure hook of pod.accepted and pod.scheduled: it
// publishes pod.images.failed for the container whose image failed. Other
// failures (Redis or the KV store not answering) are not the pod's: the
// message is dead-lettered when its deliveries run out.
//
// The images prepared before the one that failed are referenced: for a pod
// that is gone (deleted while this event was tried again) nothing would
// drop those references, so they are dropped here. The failure is told
// all the same: a pod that is gone ignores it, and a KV replica that lags
// must not keep a live pod from learning why its images failed.
func (s *Service) imagesFailed(ctx context.Context, m *bus.Message, ns, name, uid string, err error) error {
	var ie *imageError
	if !errors.As(err, &ie) {
		return bus.ErrNoFailureEvent
	}
	if rec, rerr := s.podRecord(ctx, ns, name); rerr != nil {
		m.Log.Warn("pod record unreadable; its chain references stay until pod.deleted", "err", rerr)
	} else if rec == nil || rec.UID != uid {
		if derr := s.dropPod(ctx, uid, nil); derr != nil {
			return derr
		}
	}
	reason := bus.ReasonOf(err, ReasonImagePrepareFailed)
	m.Log.Warn("pod images failed", "container", ie.c.Name, "image", ie.c.Image, "reason", reason, "err", err)
	ctx, cancel := publishContext(ctx)
	defer cancel()
	return s.out.Emit(ctx, &m.Event, &events.PodImagesFailed{
		PodRef: events.PodRef{Namespace: ns, Name: name, UID: uid}, Container: ie.c.Name, Image: ie.c.Image, Reason: reason, Message: m.FailureMessage(err),
	})
}

// prepareOne resolves, ensures and references one image for a pod, and
// announces it with image.pulled.
func (s *Service) prepareOne(ctx context.Context, m *bus.Message, uid, ref string, pl placement) (prepared, error) {
	img, err := s.resolve(ctx, ref)
	if err != nil {
		return prepared{}, err
	}
	var p prepared
	var refs []string
	// A chain may be evicted between ensure and the reference: then ensure
	// again (the collector never evicts a referenced chain, so the second
	// round sticks unless the datastore churns).
	for attempt := 0; ; attempt++ {
		p, err = s.ensureRecent(ctx, img, pl, attempt == 0)
		if err != nil {
			return prepared{}, err
		}
		refs, err = s.db.AddRefs(ctx, uid, p.chain)
		if err == nil {
			break
		}
		if !errors.Is(err, chaindb.ErrNotReady) || attempt == 3 {
			return prepared{}, err
		}
	}
	if err := s.moveReferences(ctx, uid, p, refs); err != nil {
		return prepared{}, err
	}
	// The manifest file is the same for every pod of the image: written
	// once per chain (a chain made again, after its datastore lost it, gets
	// it again), not once per pod.
	top := p.chain[len(p.chain)-1]
	written := manifestWritten{digest: img.manifest.Digest, datastore: p.datastore, chain: top.ChainID, created: top.CreatedAt.UnixNano()}
	if _, ok := s.manifests.Load(written); !ok {
		if err := s.store.WriteManifest(ctx, p.datastore, img.manifest); err != nil {
			return prepared{}, err
		}
		s.manifests.Store(written, true)
	}
	// image.pulled announces an image on a datastore once (the first pod
	// to find it complete there), not once per pod; announce.go.
	mine, err := s.claimAnnouncement(ctx, img.manifest.Digest, p.datastore, m.Event.ID())
	if err != nil || !mine {
		return p, err
	}
	fresh, err := s.layersNotShared(ctx, img.manifest, p.datastore)
	if err != nil {
		return p, err
	}
	pulled := events.ImagePulled{
		Image:        ref,
		Digest:       img.manifest.Digest,
		Bytes:        img.manifest.Size(),
		LayersPulled: fresh,
		Datastore:    p.datastore,
	}
	for _, c := range p.chain {
		pulled.Chain = append(pulled.Chain, events.ChainDisk{ChainID: c.ChainID, Disk: c.Disk, Parent: c.Parent, Size: c.Size})
	}
	// Its object key (the subject) names the datastore too.
	pctx, cancel := publishContext(ctx)
	defer cancel()
	if err := s.out.Emit(pctx, &m.Event, &pulled); err != nil {
		return p, err
	}
	return p, s.announced(pctx, img.manifest.Digest, p.datastore, m.Event.ID())
}

// moveReferences drops the pod's references (refs: all it has) to the
// same chains on other datastores (the chain was copied to the host's
// datastore).
func (s *Service) moveReferences(ctx context.Context, uid string, p prepared, refs []string) error {
	for _, member := range refs {
		id, ds, ok := il.ParseIndexMember(member)
		if !ok || ds == p.datastore {
			continue
		}
		if slices.ContainsFunc(p.chain, func(c events.ChainRecord) bool { return c.ChainID == id }) {
			if _, err := s.db.DropRef(ctx, id, ds, uid); err != nil {
				return err
			}
		}
	}
	return nil
}

// onDeleted drops the pod's references. The chains stay until the garbage
// collector needs the room.
func (s *Service) onDeleted(ctx context.Context, e *events.PodDeleted) error {
	// If Redis lost the pod's reference set, the event's digests still name
	// the chains; the pod may reference them on any datastore.
	var members []string
	for _, d := range e.Images {
		man, ok, err := s.db.Reader().Manifest(ctx, d)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		for _, l := range man.Layers {
			locs, err := s.db.Locations(ctx, l.ChainID)
			if err != nil {
				return err
			}
			for ds := range locs {
				members = append(members, il.IndexMember(l.ChainID, ds))
			}
		}
	}
	return s.dropPod(ctx, e.UID, members)
}

// dropPod drops every reference of pod uid — those its set names, and
// members ("<chainID>@<ds>") it may hold that the set does not name — and
// forgets what the image cache kept of the pod.
func (s *Service) dropPod(ctx context.Context, uid string, members []string) error {
	have, err := s.db.PodRefs(ctx, uid)
	if err != nil {
		return err
	}
	members = append(members, have...)
	slices.Sort(members)
	for _, member := range slices.Compact(members) {
		id, ds, ok := il.ParseIndexMember(member)
		if !ok {
			continue
		}
		if _, err := s.db.DropRef(ctx, id, ds, uid); err != nil {
			return err
		}
	}
	if err := s.db.ForgetPod(ctx, uid); err != nil {
		return err
	}
	return s.db.Client().Del(ctx, il.PodContainersKey(uid), il.PodReadyKey(uid)).Err()
}

// recordNotFoundDeliveries is the delivery of a pod event from which a pod
// record not found is taken for a pod that is gone (podStays): with the
// default back-off, a few seconds of reading again first.
const recordNotFoundDeliveries = 4

// podDeleting is how soon a pod event of a pod being deleted looks again.
const podDeleting = time.Second

// podCheckInterval is how often a preparation in flight reads its pod's
// record (whilePodStays): a preparation that ends within it costs no read.
const podCheckInterval = 2 * time.Second

// errPodLeaving ends the preparation of a pod found being deleted or gone.
var errPodLeaving = errors.New("the pod is being deleted or gone: its preparation stops")

// whilePodStays returns ctx, cancelled with errPodLeaving once the pod's
// record, read every podCheckInterval, says the pod is being deleted, names
// a newer pod of the name, or is gone after it was read. A pull that hangs
// or is retried otherwise keeps the pod's worker (and its pod.deleted,
// queued behind it under the same key) until its bounds run out. A chain
// another pod waits for too is pulled on for that pod (flights). A record
// never read is not taken for a pod that is gone (a KV replica that lags
// behind its creation): podStays decides once the images are referenced.
func (s *Service) whilePodStays(ctx context.Context, pod events.PodRef) (context.Context, func()) {
	seen := false
	return cancelWhen(ctx, podCheckInterval, func(ctx context.Context) error {
		rec, err := s.podRecord(ctx, pod.Namespace, pod.Name)
		switch {
		case err != nil, rec == nil && !seen:
			// Not the pod's doing, or not known yet: looked at again.
		case rec == nil || rec.UID != pod.UID || !rec.DeletionRequestedAt.IsZero():
			s.log.Info("pod being deleted or gone: its images are no longer prepared", "pod", pod.ObjectKey(), "uid", pod.UID)
			return errPodLeaving
		default:
			seen = true
		}
		return nil
	})
}

// podStays checks, once the pod's chains are referenced, that the pod still
// exists. A pod.accepted or pod.scheduled handled after the pod's
// pod.deleted (tried again after a failed attempt, or by another replica)
// would otherwise leave references nothing ever drops, and the garbage
// collector would never evict those chains; and it would announce images
// for a pod that is gone. The provisioner announces pod.deleted before it
// removes the record, so a pod whose deletion was requested is looked at
// again until its record is gone. A pod whose record is gone, or belongs
// to a newer pod of that name, has its references (those of preps too) and
// keys dropped here, and nothing is announced. network-config does the
// same after allocating (services/netconfig/attach.go, ownerStays).
//
// A record not found is read again on the next deliveries before it is
// taken for a pod that is gone: a KV replica that has not caught up with
// the record's creation must not cost a live pod its images. On the last
// delivery a pod still being deleted counts as gone: its VM is on its way
// out, and a dropped reference marks the chain used now, so the collector
// leaves it alone for GCGrace.
func (s *Service) podStays(ctx context.Context, m *bus.Message, ns, name, uid string, preps map[string]prepared) (bool, error) {
	rec, err := s.podRecord(ctx, ns, name)
	if err != nil {
		return false, err
	}
	key := events.PodKey(ns, name)
	switch {
	case rec != nil && rec.UID == uid && rec.DeletionRequestedAt.IsZero():
		return true, nil
	case m.LastDelivery():
	case rec != nil && rec.UID == uid:
		return false, bus.RetryAfter(fmt.Errorf("pod %s is being deleted: its chain references are dropped once it is gone", key), podDeleting)
	case rec == nil && m.Delivery < recordNotFoundDeliveries:
		return false, fmt.Errorf("pod record %s not found (a KV replica that lags, or the pod is gone): reading again", key)
	}
	var members []string
	for _, p := range preps {
		for _, c := range p.chain {
			members = append(members, il.IndexMember(c.ChainID, p.datastore))
		}
	}
	if err := s.dropPod(ctx, uid, members); err != nil {
		return false, err
	}
	m.Log.Info("pod gone while its images were prepared: its references dropped, nothing announced", "pod", key, "uid", uid)
	return false, nil
}

// rememberContainers keeps the pod's containers for pod.scheduled, which
// does not carry them, and returns what the pod's last pod.images.ready
// announced as kept ("": none), in one round trip.
func (s *Service) rememberContainers(ctx context.Context, uid string, cs []container) (lastReady string, err error) {
	b, err := json.Marshal(cs)
	if err != nil {
		return "", err
	}
	pipe := s.db.Client().Pipeline()
	set := pipe.Set(ctx, il.PodContainersKey(uid), b, 0)
	ready := pipe.Get(ctx, il.PodReadyKey(uid))
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	if err := set.Err(); err != nil {
		return "", fmt.Errorf("keep the containers of pod %s: %w", uid, err)
	}
	if err := ready.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("read what was announced of pod %s: %w", uid, err)
	}
	return ready.Val(), nil
}

// containersOf returns the pod's containers: from kept (their JSON as
// Redis keeps it), or, when Redis lost them, from the provisioner's pod
// record (a read model).
func (s *Service) containersOf(ctx context.Context, ns, name, uid string, kept []byte) ([]container, error) {
	if kept != nil {
		var cs []container
		if err := json.Unmarshal(kept, &cs); err == nil && len(cs) > 0 {
			return cs, nil
		}
	}
	rec, err := s.podRecord(ctx, ns, name)
	if err != nil || rec == nil || rec.UID != uid {
		return nil, err
	}
	var cs []container
	for _, c := range events.PodContainers(&rec.Pod) {
		cs = append(cs, container{Name: c.Name, Image: c.Image})
	}
	_, err = s.rememberContainers(ctx, uid, cs)
	return cs, err
}

// podRecord reads the provisioner's record of pod ns/name (nil: none).
func (s *Service) podRecord(ctx context.Context, ns, name string) (*events.PodRecord, error) {
	kv, err := s.podsBucket(ctx)
	if err != nil {
		return nil, err
	}
	entry, err := kv.Get(ctx, events.PodRecordKey(ns, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pod record %s: %w", events.PodKey(ns, name), err)
	}
	var rec events.PodRecord
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		return nil, fmt.Errorf("pod record %s: %w", events.PodKey(ns, name), err)
	}
	return &rec, nil
}

// podsBucket is the provisioner's pods bucket, looked up once.
func (s *Service) podsBucket(ctx context.Context) (jetstream.KeyValue, error) {
	s.podsMu.Lock()
	defer s.podsMu.Unlock()
	if s.pods != nil {
		return s.pods, nil
	}
	kv, err := s.bus.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, fmt.Errorf("read pods bucket: %w", err)
	}
	s.pods = kv
	return kv, nil
}

// publishReady announces the pod's images as the effect of m's event (a
// pod.accepted when onAccepted), and keeps what it announced and on which
// event (onScheduled reads it).
func (s *Service) publishReady(ctx context.Context, m *bus.Message, ns, name, uid string, cs []container, preps map[string]prepared, onAccepted bool) error {
	sig := readySignature(cs, preps)
	if onAccepted {
		sig = acceptedMark + sig
	}
	ready := events.PodImagesReady{PodRef: events.PodRef{Namespace: ns, Name: name, UID: uid}}
	for _, c := range cs {
		p := preps[c.Image]
		ready.Containers = append(ready.Containers, events.ContainerImage{
			Container: c.Name,
			Image:     c.Image,
			Digest:    p.image.manifest.Digest,
			Datastore: p.datastore,
			Disk:      p.topDisk(),
			Chain:     p.chainPaths(),
			ChainIDs:  p.chainIDs(),
			FS:        events.ImageDiskFS,
			Config:    p.image.manifest.Config,
		})
	}
	pctx, cancel := publishContext(ctx)
	defer cancel()
	if err := s.out.Emit(pctx, &m.Event, &ready); err != nil {
		return err
	}
	return s.db.Client().Set(ctx, il.PodReadyKey(uid), sig, 0).Err()
}

// publishContext is the context of a publish: not cut short by the end of
// the handler's context (a shutdown lets the announcement of work done go
// out), bounded on its own.
func publishContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

// layersNotShared counts the layers of m that no other image announced on
// ds has: the layers the datastore had to receive for this image. (Which
// pod's worker fetched a layer is an accident of scheduling; this is not.)
func (s *Service) layersNotShared(ctx context.Context, m il.Manifest, ds string) (int, error) {
	digests, err := s.db.Client().SMembers(ctx, il.IndexImages).Result()
	if err != nil {
		return 0, err
	}
	shared := map[string]bool{}
	for _, d := range digests {
		if d == m.Digest {
			continue
		}
		on, err := s.db.Client().SIsMember(ctx, il.AnnouncedKey(d), ds).Result()
		if err != nil {
			return 0, err
		}
		if !on {
			continue
		}
		other, ok, err := s.db.Reader().Manifest(ctx, d)
		if err != nil || !ok {
			continue
		}
		for _, l := range other.Layers {
			shared[l.ChainID] = true
		}
	}
	n := 0
	for _, l := range m.Layers {
		if !shared[l.ChainID] {
			n++
		}
	}
	return n, nil
}
