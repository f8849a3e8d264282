package allinone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sync/errgroup"
)

// Simulator control: `podvisor sim host fail|recover|maintenance NAME` runs
// in another process than `podvisor up`, which holds the simulated
// datacenter, so the CLI asks over NATS request/reply. The subjects are
// outside every stream: a control request is an order to the simulator,
// not a fact of the system. What the simulator then does (a host stops
// responding) reaches the services the way a real vCenter's change would:
// through the scheduler's inventory watch.
const (
	SubjectSimHostFail        = "pv.sim.host.fail"
	SubjectSimHostRecover     = "pv.sim.host.recover"
	SubjectSimHostMaintenance = "pv.sim.host.maintenance"
)

// SimHostRequest is the JSON request on the pv.sim.host.* subjects.
type SimHostRequest struct {
	// Host is the host name.
	Host string `json:"host"`
	// Maintenance is the wanted state on SubjectSimHostMaintenance.
	Maintenance bool `json:"maintenance,omitempty"`
}

// SimHostReply is the JSON answer.
type SimHostReply struct {
	Host string `json:"host"`
	// State says what the host is now, for a person.
	State string `json:"state"`
}

// ErrNoSimulator is what a request gets from an `up` that uses an external
// vCenter: there is no simulator to control.
var ErrNoSimulator = errors.New("this podvisor up uses an external vCenter, not the embedded simulator; sim commands act on the simulator only")

// serveSimControl answers simulator-control requests until ctx ends.
func (s *System) serveSimControl(ctx context.Context) error {
	b, err := s.Dial(ctx, "simcontrol")
	if err != nil {
		return fmt.Errorf("sim control: %w", err)
	}
	defer b.Close()
	g, gctx := errgroup.WithContext(ctx)
	for _, subject := range []string{SubjectSimHostFail, SubjectSimHostRecover, SubjectSimHostMaintenance} {
		g.Go(func() error {
			return b.Serve(gctx, subject, func(ctx context.Context, data []byte) ([]byte, error) {
				return s.simHost(ctx, subject, data)
			})
		})
	}
	return g.Wait()
}

// simHost carries out one request through the simulator's own update path,
// so that property-collector watchers (the scheduler's inventory) see it.
func (s *System) simHost(ctx context.Context, subject string, data []byte) ([]byte, error) {
	var req SimHostRequest
	if err := json.Unmarshal(data, &req); err != nil || strings.TrimSpace(req.Host) == "" {
		return nil, errors.New(`want JSON {"host": "<host name>"}`)
	}
	dc := s.Datacenter
	if dc == nil {
		return nil, ErrNoSimulator
	}
	if _, err := dc.Host(req.Host); err != nil {
		names := make([]string, 0, 4)
		for _, h := range dc.Hosts() {
			if len(names) == 4 {
				names = append(names, "…")
				break
			}
			names = append(names, h.Name)
		}
		return nil, fmt.Errorf("host %q is not in the simulated datacenter (hosts: %s)", req.Host, strings.Join(names, ", "))
	}
	reply := SimHostReply{Host: req.Host}
	var err error
	switch subject {
	case SubjectSimHostFail:
		err, reply.State = dc.FailHost(ctx, req.Host), "notResponding"
	case SubjectSimHostRecover:
		err, reply.State = dc.RecoverHost(ctx, req.Host), "connected"
	case SubjectSimHostMaintenance:
		reply.State = "out of maintenance mode"
		if req.Maintenance {
			reply.State = "in maintenance mode"
		}
		err = dc.SetMaintenance(ctx, req.Host, req.Maintenance)
	default:
		err = fmt.Errorf("unknown subject %s", subject)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("simulator control", "subject", subject, "host", req.Host, "state", reply.State)
	return json.Marshal(reply)
}
