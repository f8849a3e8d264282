package migration

import (
	"log/slog"

	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Deps are the service's connections.
type Deps struct {
	// Bus is required.
	Bus *bus.Bus
	// VSphere is the vCenter session pod VMs are moved through; required.
	VSphere *vsphere.Session
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// New builds the service; it fails on a bad configuration, a missing
// dependency or a missing KV bucket rather than on the first event.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.Bus == nil {
		return nil, ErrNoBus
	}
	if deps.VSphere == nil || deps.VSphere.Client == nil || deps.VSphere.Datacenter == nil {
		return nil, ErrNoVSphere
	}
	return newService(cfg, deps.Bus, vmotion.New(deps.VSphere.Client.Client, deps.VSphere.Datacenter), deps.Logger)
}
