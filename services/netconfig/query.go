package netconfig

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
)

// queryTimeout bounds one availability answer (two KV reads and a look at
// the host in vCenter); the asker's own deadline, when sooner, bounds it
// too (bus.HeaderReplyBy).
const queryTimeout = 2 * time.Second

// serveQueries answers events.SubjectQueryNetworkAvailable requests until
// ctx ends, through bus.ServeWithin: in a queue group (any number of
// replicas share the load, each request gets one answer), several at once
// (a slow vCenter read of one host does not hold up the others), and none
// after its asker has stopped waiting. Answered one at a time, queries
// queued behind slow ones at thousands of hosts and their late answers
// were refused by the server (a service may answer a request only within
// bus.AnswerWindow). ctx also bounds the repairs an answer starts.
func (s *Service) serveQueries(ctx context.Context) error {
	return s.bus.ServeWithin(ctx, events.SubjectQueryNetworkAvailable, queryTimeout, func(qctx context.Context, data []byte) ([]byte, error) {
		ans := s.Available(qctx, data)
		if ans.State == events.NetworkOnHostFailed && ans.Reason == ReasonNotRealized {
			s.repairSoon(ctx, ans.Network)
		}
		return json.Marshal(ans)
	})
}

// Available answers one availability query (JSON of
// events.NetworkAvailabilityQuery): the network record and the host's
// state in `net-realized` say where the network should be (two small
// reads), then the host itself is read back from vCenter,
// since the model is only as fresh as the last push while the question is
// asked right before a pod is bound there. A host that is not connected, or
// that reads back without the port group the model says it carries, is
// Failed for the network.
func (s *Service) Available(ctx context.Context, request []byte) events.NetworkAvailabilityAnswer {
	var q events.NetworkAvailabilityQuery
	if err := json.Unmarshal(request, &q); err != nil || q.Network == "" || q.Host == "" {
		return events.NetworkAvailabilityAnswer{Network: q.Network, Host: q.Host, Reason: "InvalidQuery",
			State:   events.NetworkOnHostNotInScope,
			Message: `want JSON {"network": "<name>", "host": "<host name>"}, both required`}
	}
	ans := events.NetworkAvailabilityAnswer{Network: q.Network, Host: q.Host, State: events.NetworkOnHostNotInScope}
	// The network's record and the host's own state: two small reads
	// whatever the number of hosts (the `net-hosts` model lists them all).
	rec, _, err := s.store.get(ctx, q.Network)
	var st *events.NetworkHostRecord
	if err == nil && rec != nil {
		st, err = s.store.hostState(ctx, q.Network, q.Host)
	}
	switch {
	case err != nil:
		ans.Reason, ans.Message = "Unavailable", err.Error()
		return ans
	case rec == nil:
		ans.Reason, ans.Message = ReasonNetworkNotFound, fmt.Sprintf("network %s does not exist", q.Network)
		return ans
	}
	ans.State = hostOn(rec, st)
	ans.InScope = ans.State != events.NetworkOnHostNotInScope
	switch ans.State {
	case events.NetworkOnHostNotInScope:
		ans.Reason, ans.Message = ReasonNotInScope, fmt.Sprintf("host %s is not in the scope of network %s", q.Host, q.Network)
		return ans
	case events.NetworkOnHostFailed:
		ans.Reason, ans.Message = ReasonNotRealized, fmt.Sprintf("host %s is in the scope of %s but its last push failed there", q.Host, q.Network)
		if st.Reason != "" {
			ans.Reason, ans.Message = st.Reason, st.Message
		}
		return ans
	}
	reason, msg, err := s.lookAtHost(ctx, q.Network, q.Host, ans.State == events.NetworkOnHostRealized)
	switch {
	case err != nil:
		// vCenter did not answer: the model's word stands.
		s.log.Warn("availability query: read the host back", "network", q.Network, "host", q.Host, "err", err)
	case reason != "":
		ans.State, ans.Reason, ans.Message = events.NetworkOnHostFailed, reason, msg
		return ans
	}
	if ans.State == events.NetworkOnHostRealized {
		ans.Available, ans.Version = true, rec.Version
	} else {
		ans.Reason, ans.Message = ReasonNotRealized, fmt.Sprintf("host %s is in the scope of %s; the network is realized there when a pod needs it", q.Host, q.Network)
	}
	return ans
}

// hostOn is where a network stands on a host from its record and the
// host's state (nil: none), as events.NetworkAvailability.On says it from
// the `net-hosts` model: realized where the host carries the current
// version, failed where its last push failed, in scope where it has a
// state at all (the hosts of the last push), else not in scope.
func hostOn(rec *events.NetworkRecord, st *events.NetworkHostRecord) string {
	switch {
	case st == nil || rec.Version == 0:
		return events.NetworkOnHostNotInScope
	case st.ReadyAt(rec.Version):
		return events.NetworkOnHostRealized
	case st.State == events.NetworkHostStateFailed:
		return events.NetworkOnHostFailed
	}
	return events.NetworkOnHostInScope
}

// lookAtHost reads one host back from vCenter: it must be connected and,
// when the network is realized there, carry its port group. It returns the
// reason and message of what is wrong, or "" when nothing is.
func (s *Service) lookAtHost(ctx context.Context, network, host string, realized bool) (reason, msg string, err error) {
	ref, err := s.hostRef(ctx, host)
	if err != nil {
		return "", "", err
	}
	view, err := s.fab.ObserveHost(ctx, ref)
	if err != nil {
		return "", "", err
	}
	if view.ConnectionState != fabric.Connected {
		return ReasonHostDisconnected, fmt.Sprintf("host %s is %s", host, view.ConnectionState), nil
	}
	if !realized {
		return "", "", nil
	}
	pgName := events.PortGroupName(network)
	// The host is read back every time; the port group's reference comes
	// from a short-lived cache (listing the port groups is three vCenter
	// calls), and a host that does not carry the cached one is checked
	// against a fresh listing before it is called not realized.
	for _, fresh := range []bool{false, true} {
		ref, ok, err := s.portGroupRef(ctx, pgName, fresh)
		if err != nil {
			return "", "", err
		}
		if ok && view.Carries(ref) {
			return "", "", nil
		}
	}
	return ReasonNotRealized, fmt.Sprintf("host %s reads back without port group %s", host, pgName), nil
}

// portGroupTTL is how long availability queries reuse a port group's
// reference: a burst of placements asks about the same network on many
// hosts, and a reference changes only when the port group is made again.
const portGroupTTL = 5 * time.Second

type cachedPortGroup struct {
	ref types.ManagedObjectReference
	at  time.Time
}

// portGroupRef returns the reference of the port group called name (ok
// false: there is none), from the cache unless fresh or older than
// portGroupTTL. One listing refreshes every port group.
func (s *Service) portGroupRef(ctx context.Context, name string, fresh bool) (types.ManagedObjectReference, bool, error) {
	if !fresh {
		if v, ok := s.pgRefs.Load(name); ok {
			if c := v.(cachedPortGroup); time.Since(c.at) < portGroupTTL {
				return c.ref, true, nil
			}
		}
	}
	all, err := s.fab.PortGroups(ctx)
	if err != nil {
		return types.ManagedObjectReference{}, false, err
	}
	now := time.Now()
	for n, pg := range all {
		s.pgRefs.Store(n, cachedPortGroup{ref: pg.Ref, at: now})
	}
	pg, ok := all[name]
	if !ok {
		s.pgRefs.Delete(name)
	}
	return pg.Ref, ok, nil
}

// hostRef finds a host's reference by name, from a cache of every host's
// reference filled by a listing on a miss (host references do not change
// while a host exists). Queries answered at once that miss together share
// one listing: at thousands of hosts a listing is seconds of vCenter work.
func (s *Service) hostRef(ctx context.Context, name string) (types.ManagedObjectReference, error) {
	if v, ok := s.hostRefs.Load(name); ok {
		return v.(types.ManagedObjectReference), nil
	}
	s.hostListing.Lock()
	defer s.hostListing.Unlock()
	if v, ok := s.hostRefs.Load(name); ok {
		return v.(types.ManagedObjectReference), nil // listed while this one waited
	}
	hosts, err := s.fab.Hosts(ctx)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	for _, h := range hosts {
		s.hostRefs.Store(h.Name, h.Ref)
	}
	if v, ok := s.hostRefs.Load(name); ok {
		return v.(types.ManagedObjectReference), nil
	}
	return types.ManagedObjectReference{}, fmt.Errorf("host %s: not in the inventory", name)
}

// repairSoon reconciles a network whose host read back without it, once at
// a time: the push reads every host back, records the host Failed (so the
// model and the scheduler learn it) and repairs what it can.
func (s *Service) repairSoon(ctx context.Context, network string) {
	if _, busy := s.repairing.LoadOrStore(network, true); busy {
		return
	}
	go func() {
		defer s.repairing.Delete(network)
		if err := s.reconcile(ctx, nil, network); err != nil && ctx.Err() == nil {
			s.log.Warn("repair after an availability query", "network", network, "err", err)
		}
	}()
}
