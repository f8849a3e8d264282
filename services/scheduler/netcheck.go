package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
)

// Before a pod is bound to the host the framework chose, network-config is
// asked whether each of the pod's networks is available there
// (events.SubjectQueryNetworkAvailable): the snapshot's network view comes
// from a watched read model that can lag behind the host, and the query
// reads the host back. A host that is refused is excluded and the pod is
// placed again in the next pass (refusals go out on pod.scheduled, and the
// provisioner keeps them on the pod's NetworkRefused condition).
//
// Pods of one commit to one host ask once per network. No network-config
// listening (a scheduler run alone) leaves the snapshot's word standing, as
// does a query that times out: the attach still checks, and its refusal
// places the pod again (onPodNetworkFailed).

// networkQueryTimeout bounds one availability question.
const networkQueryTimeout = 2 * time.Second

// maxQueryRefusals bounds how many hosts the query may refuse for one
// placement before the pod is reported unschedulable (it is then retried
// like any waiting pod).
const maxQueryRefusals = 4

// askNetwork asks network-config about one network on one host; ok is false
// when nobody answered.
func (s *Service) askNetwork(ctx context.Context, network, host string) (events.NetworkAvailabilityAnswer, bool) {
	data, _ := json.Marshal(events.NetworkAvailabilityQuery{Network: network, Host: host})
	ctx, cancel := context.WithTimeout(ctx, networkQueryTimeout)
	defer cancel()
	// bus.Request tells network-config when this stops waiting, so an
	// answer that would come too late is not computed (nor refused).
	out, err := s.bus.Request(ctx, events.SubjectQueryNetworkAvailable, data)
	if err != nil {
		if !errors.Is(err, nats.ErrNoResponders) {
			s.log.Warn("network availability query unanswered; the snapshot decides", "network", network, "host", host, "err", err)
		}
		return events.NetworkAvailabilityAnswer{}, false
	}
	var ans events.NetworkAvailabilityAnswer
	if err := json.Unmarshal(out, &ans); err != nil || ans.State == "" {
		s.log.Warn("undecodable network availability answer; the snapshot decides", "network", network, "host", host, "err", err)
		return events.NetworkAvailabilityAnswer{}, false
	}
	return ans, true
}

// checkNetworks asks about the networks of the pods placed on host and
// returns, per tentative, the refusal of its first unavailable network
// (nil where every network is available).
func (s *Service) checkNetworks(ctx context.Context, host string, ts []tentative) []*events.HostRefusal {
	var nets []string
	seen := map[string]bool{}
	for _, t := range ts {
		if t.replay {
			continue // placed there already: nothing to ask
		}
		for _, n := range t.r.pod.Networks {
			if !seen[n] {
				seen[n] = true
				nets = append(nets, n)
			}
		}
	}
	out := make([]*events.HostRefusal, len(ts))
	if len(nets) == 0 {
		return out
	}
	refusals := make(map[string]*events.HostRefusal, len(nets))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ans, ok := s.askNetwork(ctx, n, host)
			if !ok || ans.Usable() {
				return
			}
			msg := ans.Message
			if msg == "" {
				msg = fmt.Sprintf("network %s is %s on host %s", n, ans.State, host)
			}
			if ans.Reason != "" {
				msg = ans.Reason + ": " + msg
			}
			mu.Lock()
			refusals[n] = &events.HostRefusal{Host: host, Network: n, Reason: events.ReasonNetworkUnavailable, Message: msg}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for i, t := range ts {
		if t.replay {
			continue
		}
		for _, n := range t.r.pod.Networks {
			if r := refusals[n]; r != nil {
				out[i] = r
				break
			}
		}
	}
	return out
}
