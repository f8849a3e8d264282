package netconfig

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// Reasons recorded on a network (NetworkRecord.Reason) or published.
const (
	ReasonInvalidSpec   = "InvalidSpec"
	ReasonRestoreFailed = "RestoreFailed"
	ReasonInUse         = "InUse"
	ReasonNotFound      = "NotFound"
)

func annotate(ctx context.Context, kv ...attribute.KeyValue) {
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.String("podvisor.service", Name))
	span.SetAttributes(kv...)
}

// onDeclared stores and pushes a network declaration.
func (s *Service) onDeclared(ctx context.Context, m *bus.Message, p *events.NetworkDeclared) error {
	annotate(ctx, attribute.String("network", p.Network.Metadata.Name))
	return s.Declare(ctx, &m.Event, p.Network, "declared")
}

// onRestoreRequested stores an earlier version as the current one.
func (s *Service) onRestoreRequested(ctx context.Context, m *bus.Message, p *events.NetworkRestoreRequested) error {
	annotate(ctx, attribute.String("network", p.Name), attribute.Int64("network.version", p.Version))
	return s.restore(ctx, &m.Event, p.Name, p.Version)
}

// onDeleteRequested deletes a network unless pods use it.
func (s *Service) onDeleteRequested(ctx context.Context, m *bus.Message, p *events.NetworkDeleteRequested) error {
	annotate(ctx, attribute.String("network", p.Name))
	return s.requestDelete(ctx, &m.Event, p.Name)
}

// Declare stores a declaration as a new version (unless it equals the
// current one) and pushes it. A declaration that cannot be applied here is
// recorded with its reason and never retried. origin says where the version
// came from ("declared", "imported").
func (s *Service) Declare(ctx context.Context, cause *event.Event, n events.Network, origin string) error {
	name := n.Metadata.Name
	defer s.locks.Lock(name)()
	rec, rev, err := s.store.get(ctx, name)
	if err != nil {
		return err
	}
	if rec != nil && rec.Status == events.NetworkStatusDeleting {
		return fmt.Errorf("network %s is being deleted; declare it again once network.deleted is published", name)
	}
	if err := s.checkSpec(ctx, name, n.Spec); err != nil {
		s.log.Warn("network declaration refused", "network", name, "err", err)
		return s.refuse(ctx, cause, rec, rev, name, n.Spec, err)
	}
	if rec != nil && cause != nil {
		if _, done := rec.VersionByEvent(cause.ID()); done {
			// A redelivery: the version exists (and may since have been
			// rolled back, which must not be undone by storing it again).
			return s.reconcileLocked(ctx, cause, name)
		}
	}
	if rec != nil && rec.Version > 0 && rec.Spec.Equal(n.Spec) {
		// Same spec as the current version: no new version, but converge.
		return s.reconcileLocked(ctx, cause, name)
	}
	if err := s.storeVersion(ctx, rec, rev, name, n.Spec, origin, eventID(cause)); refusal(err) {
		s.log.Warn("network change refused", "network", name, "err", err)
		return s.refuse(ctx, cause, rec, rev, name, n.Spec, err)
	} else if err != nil {
		return err
	}
	// A first version, or a wider pool: services waiting for the network
	// get their addresses.
	if err := s.serveWaiting(ctx, name); err != nil {
		return err
	}
	return s.reconcileLocked(ctx, cause, name)
}

// storeVersion appends a new version with spec and makes it current. A
// version that changes the addressing is stored only if every address
// held on the network stays valid under it; otherwise nothing is stored
// and the refusal (ErrInUse) is returned, for refuse.
func (s *Service) storeVersion(ctx context.Context, rec *events.NetworkRecord, rev uint64, name string, spec events.NetworkSpec, origin, eventID string) (err error) {
	// putUnknown: the put failed other than by a conflict, so the version
	// may be stored all the same (a timeout).
	var putUnknown bool
	if rec == nil {
		rec = &events.NetworkRecord{Name: name, PortGroup: events.PortGroupName(name)}
	}
	// Attaches in flight finish on the version they read; the next ones
	// read this one.
	defer s.uses.Lock(name)()
	if readdresses(rec, spec) {
		// Other replicas' allocations from this record or an older one
		// are held (ipam's fence): the listing below then sees every
		// address the new version must keep. Stored, the hold stays for
		// good; not stored, this change lifts its own hold and no other
		// (another replica may be changing the network from the same
		// record). A put whose outcome is unknown settles the hold from
		// the record read again; a hold left behind all the same (a
		// failed release or read) lapses after ipam.HoldLease, so the
		// steps from the hold to the put are bounded well under it.
		hold, err := s.ipam.HoldAddressing(ctx, name, rev+1)
		if err != nil {
			return err
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ipam.HoldLease/4)
		defer cancel()
		defer func() {
			// The hold is settled even when the steps ran out of time.
			dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer dcancel()
			switch {
			case err == nil:
				if kerr := s.ipam.KeepAddressing(dctx, name, hold); kerr != nil {
					s.log.Warn("keep the hold on allocations", "network", name, "err", kerr)
				}
			case putUnknown:
				// The version may be stored: read the record again and
				// settle the hold from it.
				_, cur, rerr := s.store.get(dctx, name)
				if rerr == nil {
					rerr = s.ipam.SettleAddressing(dctx, name, hold, cur)
				}
				if rerr != nil {
					s.log.Warn("settle the hold on allocations; it lapses after "+ipam.HoldLease.String(), "network", name, "err", rerr)
				}
			default:
				if rerr := s.ipam.ReleaseAddressing(dctx, name, hold); rerr != nil {
					s.log.Warn("release the hold on allocations", "network", name, "err", rerr)
				}
			}
		}()
		if err := s.addressesKept(ctx, name, spec); err != nil {
			return err
		}
	}
	next := rec.LatestVersion() + 1
	rec.History = append(rec.History, events.NetworkVersion{
		Version: next, Spec: spec, Status: events.NetworkVersionPending, Origin: origin, Event: eventID, CreatedAt: time.Now().UTC(),
	})
	if over := len(rec.History) - s.cfg.HistoryLimit; over > 0 {
		rec.History = slices.Clone(rec.History[over:])
	}
	rec.Version, rec.Spec = next, spec
	rec.Status, rec.Reason, rec.Message = events.NetworkStatusPending, "", ""
	rec.HostsReady = 0 // no host carries the new version yet
	_, err = s.store.put(ctx, rec, rev)
	putUnknown = err != nil && !record.Conflict(err)
	return err
}

// refusal reports whether a declaration's error is a refusal to record
// (refuse) rather than a failure to retry.
func refusal(err error) bool { return errors.Is(err, ErrInUse) || errors.Is(err, ErrInvalidSpec) }

// readdresses reports whether spec changes the addressing of a network
// that has had a version applied (so addresses may be held on it).
func readdresses(rec *events.NetworkRecord, spec events.NetworkSpec) bool {
	return rec.LatestVersion() > 0 && (rec.Spec.CIDR != spec.CIDR || rec.Spec.Gateway != spec.Gateway)
}

// addressesKept refuses addressing that leaves an address held on the
// network invalid: outside the new CIDR's usable range (a narrower or
// another CIDR, a shorter prefix) or on the new gateway. Widening, or a
// new gateway nobody holds, is taken. The refusal names the field, how
// many attachments hold addresses and which of them the change would cut
// off.
func (s *Service) addressesKept(ctx context.Context, name string, spec events.NetworkSpec) error {
	pl, err := ipam.PoolOf(name, spec)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	allocs, err := s.ipam.Allocations(ctx, name)
	if err != nil {
		return err
	}
	var outside, onGateway []string
	for _, a := range allocs {
		ip, err := netip.ParseAddr(a.IP)
		if err == nil && pl.Holds(ip) {
			continue
		}
		held := events.PodKey(a.Namespace, a.Name) + " " + a.IP
		if err == nil && ip == pl.Gateway {
			onGateway = append(onGateway, held)
		} else {
			outside = append(outside, held)
		}
	}
	if len(outside) == 0 && len(onGateway) == 0 {
		return nil
	}
	slices.Sort(outside)
	slices.Sort(onGateway)
	var why []string
	if len(outside) > 0 {
		why = append(why, fmt.Sprintf("spec.cidr: %s would leave %d of them outside its usable addresses (%s)", spec.CIDR, len(outside), abbreviate(outside, 5)))
	}
	if len(onGateway) > 0 {
		why = append(why, fmt.Sprintf("spec.gateway: %s is held by %s", spec.Gateway, abbreviate(onGateway, 5)))
	}
	return fmt.Errorf("%w: %s hold addresses on network %s; %s; delete the pods or VMs holding them first, or keep their addresses valid",
		ErrInUse, attachments(len(allocs)), name, strings.Join(why, "; "))
}

// attachments counts attachments for a person: "1 attachment", "3 attachments".
func attachments(n int) string {
	if n == 1 {
		return "1 attachment"
	}
	return fmt.Sprintf("%d attachments", n)
}

// refuse records why a declaration was not applied: a new network is stored
// as Rejected (so `podvisor get networks` shows the reason), an existing one
// keeps its current version and gets the reason.
func (s *Service) refuse(ctx context.Context, cause *event.Event, rec *events.NetworkRecord, rev uint64, name string, spec events.NetworkSpec, why error) error {
	reason, sentinel := ReasonInvalidSpec, ErrInvalidSpec
	if errors.Is(why, ErrInUse) {
		reason, sentinel = ReasonInUse, ErrInUse
	}
	msg := strings.TrimPrefix(why.Error(), sentinel.Error()+": ")
	switch {
	case rec == nil:
		rec = &events.NetworkRecord{Name: name, PortGroup: events.PortGroupName(name), Spec: spec, Status: events.NetworkStatusRejected}
	case rec.Version == 0 && rec.Status == events.NetworkStatusRejected:
		rec.Spec = spec // still never applied: show what was asked last
	default:
		msg = "new version not stored: " + msg
	}
	rec.Reason, rec.Message, rec.RefusedEvent = reason, msg, eventID(cause)
	_, err := s.store.put(ctx, rec, rev)
	return err
}

func eventID(ev *event.Event) string {
	if ev == nil {
		return ""
	}
	return ev.ID()
}

// checkSpec validates a declaration against what only network-config knows:
// the inventory (clusters and hosts named in the scope must exist) and the
// other networks (CIDRs must not overlap; a VLAN other than 0 is not used
// twice on one host). The payload itself was validated on decode.
func (s *Service) checkSpec(ctx context.Context, name string, spec events.NetworkSpec) error {
	var errs []string
	var inventory []fabric.Host // read once, when the scope or a shared VLAN needs it
	if !spec.Scope.All() {
		hosts, err := s.fab.Hosts(ctx)
		if err != nil {
			return err
		}
		inventory = hosts
		clusters, names := map[string]bool{}, map[string]bool{}
		for _, h := range hosts {
			clusters[h.Cluster], names[h.Name] = true, true
		}
		for i, c := range spec.Scope.Clusters {
			if !clusters[c] {
				errs = append(errs, fmt.Sprintf("spec.scope.clusters[%d]: cluster %q not found (have %s)", i, c, strings.Join(sortedKeys(clusters), ", ")))
			}
		}
		for i, h := range spec.Scope.Hosts {
			if !names[h] {
				errs = append(errs, fmt.Sprintf("spec.scope.hosts[%d]: host %q not found", i, h))
			}
		}
		if len(inScope(spec.Scope, hosts)) == 0 && len(errs) == 0 {
			errs = append(errs, "spec.scope: selects no host")
		}
	}
	others, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	for _, o := range others {
		if o.Name == name || o.Version == 0 || o.Status == events.NetworkStatusDeleting {
			continue
		}
		if overlaps(o.Spec.CIDR, spec.CIDR) {
			errs = append(errs, fmt.Sprintf("spec.cidr: %s overlaps %s of network %s", spec.CIDR, o.Spec.CIDR, o.Name))
		}
		// Two subnets tagged with the same VLAN on one host are one
		// broadcast domain: pods of either would see the other's traffic.
		// Disjoint scopes (other clusters) may reuse a VLAN, and untagged
		// (0) is no VLAN to share.
		if spec.VLAN == 0 || o.Spec.VLAN != spec.VLAN {
			continue
		}
		if inventory == nil {
			if inventory, err = s.fab.Hosts(ctx); err != nil {
				return err
			}
		}
		if shareHost(spec.Scope, o.Spec.Scope, inventory) {
			errs = append(errs, fmt.Sprintf("spec.vlan: VLAN %d is already used by network %s (%s) on hosts this network reaches too; networks sharing hosts need distinct VLANs", spec.VLAN, o.Name, o.Spec.CIDR))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, strings.Join(errs, "; "))
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// restore stores an earlier version's spec as a new version and pushes it.
func (s *Service) restore(ctx context.Context, cause *event.Event, name string, version int64) error {
	defer s.locks.Lock(name)()
	rec, rev, err := s.store.get(ctx, name)
	if err != nil {
		return err
	}
	if rec == nil {
		s.log.Warn("restore of an unknown network", "network", name, "version", version)
		return nil
	}
	if _, done := rec.VersionByEvent(eventID(cause)); done {
		return s.reconcileLocked(ctx, cause, name) // redelivered
	}
	v, ok := rec.FindVersion(version)
	if !ok {
		var kept []string
		for _, h := range rec.History {
			kept = append(kept, fmt.Sprint(h.Version))
		}
		rec.Reason, rec.RefusedEvent = ReasonRestoreFailed, eventID(cause)
		rec.Message = fmt.Sprintf("version %d is not in the history (kept: %s); export versions to keep them longer", version, strings.Join(kept, ", "))
		_, err := s.store.put(ctx, rec, rev)
		return err
	}
	if err := s.checkSpec(ctx, name, v.Spec); err != nil {
		return s.refuse(ctx, cause, rec, rev, name, v.Spec, err)
	}
	if err := s.storeVersion(ctx, rec, rev, name, v.Spec, fmt.Sprintf("restored from version %d", version), eventID(cause)); refusal(err) {
		s.log.Warn("network restore refused", "network", name, "version", version, "err", err)
		return s.refuse(ctx, cause, rec, rev, name, v.Spec, err)
	} else if err != nil {
		return err
	}
	if err := s.serveWaiting(ctx, name); err != nil {
		return err
	}
	return s.reconcileLocked(ctx, cause, name)
}

// requestDelete deletes a network unless pods use it.
func (s *Service) requestDelete(ctx context.Context, cause *event.Event, name string) error {
	defer s.locks.Lock(name)()
	rec, rev, err := s.store.get(ctx, name)
	if err != nil {
		return err
	}
	if rec == nil {
		return s.out.Emit(ctx, cause, &events.NetworkDeleteRejected{
			Name: name, Reason: ReasonNotFound, Message: fmt.Sprintf("network %s does not exist", name),
		}, bus.Distinct("delete"))
	}
	// Fence the network's allocations first (every replica's, see
	// ipam.BeginDelete), then count: an address allocated concurrently is
	// either counted here or given back by its allocator. The attaches of
	// this process wait meanwhile.
	unlock := sync.OnceFunc(s.uses.Lock(name))
	defer unlock()
	if err := s.ipam.BeginDelete(ctx, name); err != nil {
		return err
	}
	allocs, err := s.ipam.Allocations(ctx, name)
	if err != nil {
		return err
	}
	if len(allocs) > 0 {
		if err := s.ipam.AbortDelete(ctx, name); err != nil {
			return err
		}
		var pods []string
		for _, a := range allocs {
			pods = append(pods, events.PodKey(a.Namespace, a.Name))
		}
		slices.Sort(pods)
		pods = slices.Compact(pods)
		msg := fmt.Sprintf("%d pods use network %s (%s); delete them first", len(pods), name, abbreviate(pods, 5))
		rec.Reason, rec.Message = ReasonInUse, "delete refused: "+msg
		if _, err := s.store.put(ctx, rec, rev); err != nil {
			return err
		}
		return s.out.Emit(ctx, cause, &events.NetworkDeleteRejected{
			Name: name, Reason: ReasonInUse, Message: msg, Pods: pods,
		}, bus.Distinct("delete"))
	}
	rec.Status, rec.Reason, rec.Message = events.NetworkStatusDeleting, "", ""
	if _, err := s.store.put(ctx, rec, rev); err != nil {
		return err
	}
	unlock() // attaches now find the network deleting
	return s.deleteLocked(ctx, cause, name)
}

func abbreviate(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return strings.Join(items[:n], ", ") + fmt.Sprintf(", and %d more", len(items)-n)
}

// deleteLocked removes the port group, cleans the hosts (they leave the
// scope's switch once no podvisor port group is left on it) and removes the
// records, then publishes network.deleted. It resumes where a crash left it.
func (s *Service) deleteLocked(ctx context.Context, cause *event.Event, name string) error {
	rec, _, err := s.store.get(ctx, name)
	if err != nil || rec == nil {
		return err
	}
	if _, err := s.fab.RemovePortGroup(ctx, events.PortGroupName(name)); err != nil {
		return err
	}
	if sw := rec.Switch; sw != "" && sw != s.cfg.AllHostsSwitch {
		if err := s.cleanSwitch(ctx, sw); err != nil {
			return err
		}
	}
	if err := s.store.remove(ctx, name); err != nil {
		return err
	}
	if err := s.ipam.ForgetNetwork(ctx, name); err != nil {
		return err
	}
	s.hostStatesSoon()
	return s.out.Emit(ctx, cause, &events.NetworkDeleted{Name: name}, bus.Distinct("delete"))
}

// cleanSwitch makes every host leave a scope switch that carries no
// podvisor port group any more.
func (s *Service) cleanSwitch(ctx context.Context, switchName string) error {
	sw, ok, err := s.fab.FindSwitch(ctx, switchName)
	if err != nil || !ok {
		return err
	}
	pgs, err := s.fab.PortGroups(ctx)
	if err != nil {
		return err
	}
	for _, pg := range pgs {
		if pg.Switch == sw.Ref && strings.HasPrefix(pg.Name, "pv-") {
			return nil
		}
	}
	for _, m := range sw.Members {
		if _, err := s.fab.Leave(ctx, switchName, m); err != nil {
			return err
		}
	}
	return nil
}

// onHostDiscovered realizes the networks of a connected new host.
func (s *Service) onHostDiscovered(ctx context.Context, m *bus.Message, p *events.HostDiscovered) error {
	if p.Host.ConnectionState != fabric.Connected {
		return nil // host.recovered follows when it connects
	}
	return s.realizeOnHost(ctx, &m.Event, p.Host.Name, p.Host.Cluster)
}

// onHostUpdated realizes what a connected host lacks.
func (s *Service) onHostUpdated(ctx context.Context, m *bus.Message, p *events.HostUpdated) error {
	if p.Host.ConnectionState != fabric.Connected {
		return nil
	}
	return s.realizeOnHost(ctx, &m.Event, p.Host.Name, p.Host.Cluster)
}

// onHostRecovered realizes what a host that came back lacks.
func (s *Service) onHostRecovered(ctx context.Context, m *bus.Message, p *events.HostRecovered) error {
	return s.realizeOnHost(ctx, &m.Event, p.Name, p.Cluster)
}

// realizeOnHost realizes, on a host that appeared or came back, every
// network whose scope covers it.
func (s *Service) realizeOnHost(ctx context.Context, cause *event.Event, host, cluster string) error {
	annotate(ctx, attribute.String("host", host))
	recs, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range recs {
		if r.Version == 0 || !r.Spec.Scope.Includes(host, cluster) {
			continue
		}
		if err := s.realizeUnlessCarried(ctx, cause, r.Name, host); err != nil {
			errs = append(errs, fmt.Errorf("network %s on host %s: %w", r.Name, host, err))
		}
	}
	return errors.Join(errs...)
}

// realizeUnlessCarried reconciles a network unless host carries its
// current version, looking again once it holds the network: host.updated
// is frequent (every host's networks change when a network is pushed), and
// the events that queued behind one push find the host carrying it.
func (s *Service) realizeUnlessCarried(ctx context.Context, cause *event.Event, name, host string) error {
	carried := func() (bool, error) {
		rec, _, err := s.store.get(ctx, name)
		if err != nil || rec == nil || rec.Version == 0 {
			return rec == nil || rec.Version == 0, err
		}
		st, err := s.store.hostState(ctx, name, host)
		return st.ReadyAt(rec.Version), err
	}
	if ok, err := carried(); err != nil || ok {
		return err
	}
	defer s.locks.Lock(name)()
	if ok, err := carried(); err != nil || ok {
		return err
	}
	return s.reconcileLocked(ctx, cause, name)
}

// onMigrationTargetReserved realizes the pod's networks on a migration's
// target before the vMotion: the scheduler reserves targets where each
// network is available (events.NetworkUsable: realized, or in scope), and
// the migration precheck waits until it is realized there. A network that
// cannot be realized there is recorded on the host (network.host.failed),
// which the precheck reads.
func (s *Service) onMigrationTargetReserved(ctx context.Context, m *bus.Message, p *events.MigrationTargetReserved) error {
	annotate(ctx, attribute.String("pod", events.PodKey(p.Namespace, p.Pod)), attribute.String("pod.uid", p.UID), attribute.String("host", p.TargetHost))
	nets, err := s.networksOf(ctx, p.Namespace, p.Pod, p.UID)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nets {
		err := s.ensureOnHost(ctx, &m.Event, n, p.TargetHost)
		if err != nil && !errors.Is(err, ErrNotInScope) && !errors.Is(err, ErrNetworkNotFound) && !errors.Is(err, ErrNotRealized) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// onMigrationCompleted moves a migrated pod's port bindings to the target
// host.
func (s *Service) onMigrationCompleted(ctx context.Context, m *bus.Message, p *events.MigrationCompleted) error {
	annotate(ctx, attribute.String("pod", events.PodKey(p.Namespace, p.Pod)), attribute.String("pod.uid", p.UID))
	recs, err := s.store.list(ctx)
	if err != nil {
		return err
	}
	for _, r := range recs {
		moved, err := s.ipam.Move(ctx, r.Name, p.UID, p.TargetHost)
		if err != nil {
			return err
		}
		if moved {
			// The scheduler only picks targets that carry the pod's networks;
			// realize on demand anyway in case the target was only in scope.
			if err := s.ensureOnHost(ctx, &m.Event, r.Name, p.TargetHost); err != nil && !errors.Is(err, ErrNotInScope) {
				return err
			}
		}
	}
	return nil
}

// ensureOnHost realizes a network's current version on one host in its
// scope, unless the host already carries it.
func (s *Service) ensureOnHost(ctx context.Context, cause *event.Event, name, host string) error {
	defer s.locks.Lock(name)()
	rec, _, err := s.store.get(ctx, name)
	if err != nil {
		return err
	}
	if rec == nil || rec.Version == 0 || rec.Status == events.NetworkStatusDeleting {
		return fmt.Errorf("network %s: %w", name, ErrNetworkNotFound)
	}
	if st, err := s.store.hostState(ctx, name, host); err != nil || st.ReadyAt(rec.Version) {
		return err
	}
	hosts, err := s.fab.Hosts(ctx)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(hosts, func(h fabric.Host) bool { return h.Name == host })
	if i < 0 || !rec.Spec.Scope.Includes(host, hosts[i].Cluster) {
		return fmt.Errorf("network %s, host %s: %w", name, host, ErrNotInScope)
	}
	if err := s.reconcileLocked(ctx, cause, name); err != nil {
		return err
	}
	rec, _, err = s.store.get(ctx, name)
	if err != nil || rec == nil {
		return err
	}
	st, err := s.store.hostState(ctx, name, host)
	if err != nil {
		return err
	}
	if !st.ReadyAt(rec.Version) {
		msg := "no state recorded"
		if st != nil {
			msg = st.Message
		}
		return fmt.Errorf("network %s on host %s: %w: %s", name, host, ErrNotRealized, msg)
	}
	return nil
}

// pool is the address pool of a network record.
func pool(rec *events.NetworkRecord) (ipam.Pool, error) {
	return ipam.PoolOf(rec.Name, rec.Spec)
}
