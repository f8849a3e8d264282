package netconfig

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
)

// queryTimeout bounds one availability answer (two KV reads).
const queryTimeout = 2 * time.Second

// serveQueries answers events.SubjectQueryNetworkAvailable requests in a
// queue group, so any number of replicas share the load and each request
// gets one answer.
func (s *Service) serveQueries() (*nats.Subscription, error) {
	sub, err := s.bus.Conn().QueueSubscribe(events.SubjectQueryNetworkAvailable, Name, func(m *nats.Msg) {
		ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
		defer cancel()
		ans := s.Available(ctx, m.Data)
		data, _ := json.Marshal(ans)
		if err := m.Respond(data); err != nil {
			s.log.Warn("answer availability query", "err", err)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("netconfig: subscribe %s: %w", events.SubjectQueryNetworkAvailable, err)
	}
	return sub, nil
}

// Available answers one availability query (JSON of
// events.NetworkAvailabilityQuery) from the `net-hosts` read model.
func (s *Service) Available(ctx context.Context, request []byte) events.NetworkAvailabilityAnswer {
	var q events.NetworkAvailabilityQuery
	if err := json.Unmarshal(request, &q); err != nil || q.Network == "" || q.Host == "" {
		return events.NetworkAvailabilityAnswer{Network: q.Network, Host: q.Host, Reason: "InvalidQuery",
			Message: `want JSON {"network": "<name>", "host": "<host name>"}, both required`}
	}
	ans := events.NetworkAvailabilityAnswer{Network: q.Network, Host: q.Host}
	a, err := s.store.availability(ctx, q.Network)
	switch {
	case err != nil:
		ans.Reason, ans.Message = "Unavailable", err.Error()
	case a == nil:
		ans.Reason, ans.Message = ReasonNetworkNotFound, fmt.Sprintf("network %s does not exist", q.Network)
	default:
		ans.InScope = a.InScope(q.Host)
		ans.Available = a.Realized(q.Host)
		switch {
		case ans.Available:
			ans.Version = a.Version
		case ans.InScope:
			ans.Reason, ans.Message = "NotRealized", fmt.Sprintf("host %s is in the scope of %s; the network is realized there when a pod needs it", q.Host, q.Network)
		default:
			ans.Reason, ans.Message = ReasonNotInScope, fmt.Sprintf("host %s is not in the scope of network %s", q.Host, q.Network)
		}
	}
	return ans
}
