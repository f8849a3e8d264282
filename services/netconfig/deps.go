package netconfig

import (
	"errors"
	"log/slog"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Deps are the connections the service runs on.
type Deps struct {
	// Bus is the JetStream connection (topology declared).
	Bus *bus.Bus
	// VSphere is the vCenter session; its Datacenter is the one whose hosts
	// and switches the service manages.
	VSphere *vsphere.Session
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

// New checks the configuration and dependencies and opens the KV buckets.
// Every problem is reported at once, naming the field.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.VSphere == nil || deps.VSphere.Client == nil {
		err := errors.New("netconfig: Deps.VSphere: required (a session with a client and a datacenter)")
		if _, cerr := newService(cfg, deps.Bus, nil, nil, deps.Logger); cerr != nil {
			return nil, cerr
		}
		return nil, err
	}
	return newService(cfg, deps.Bus, deps.VSphere.Client.Client, deps.VSphere.Datacenter, deps.Logger)
}
