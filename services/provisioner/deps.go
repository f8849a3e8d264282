package provisioner

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Deps are the connections the provisioner works through. The process owns
// them: the service neither opens nor closes them.
type Deps struct {
	// Bus carries the events and holds the `pods` bucket (topology declared).
	Bus *bus.Bus
	// VSphere is the vCenter session, scoped to the datacenter pod VMs live in.
	VSphere *vsphere.Session
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

// New checks the configuration and dependencies and opens the `pods`
// bucket, so that a misconfigured process fails at start rather than on
// its first event.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.VSphere == nil || deps.VSphere.Client == nil || deps.VSphere.Datacenter == nil {
		return nil, ErrNoVSphere
	}
	if deps.Bus == nil {
		return nil, ErrNoBus
	}
	vms := podvm.New(deps.VSphere.Vim(), deps.VSphere.Datacenter)
	vms.Logger, vms.BlankEphemeral = deps.Logger, !cfg.EphemeralTemplate
	s, err := newService(cfg, deps.Bus, vms, deps.Logger)
	if err != nil {
		return nil, err
	}
	// The native VM controller runs beside the pod VM controller, on the
	// same connections.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.native, err = nativevm.New(ctx, cfg.NativeVM, nativevm.Deps{Bus: deps.Bus, VSphere: deps.VSphere, Logger: deps.Logger})
	if err != nil {
		return nil, fmt.Errorf("provisioner: %w", err)
	}
	return s, nil
}
