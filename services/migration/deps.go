package migration

import (
	"fmt"

	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/deps"
)

// Deps are the service's connections (package deps): the bus and the
// vCenter session pod VMs are moved through, both required.
type Deps = deps.Deps

// New builds the service; it fails on a bad configuration, a missing
// dependency or a missing KV bucket rather than on the first event.
func New(cfg Config, d Deps) (*Service, error) {
	if err := d.Require(deps.NeedBus("migrations are asked for, recorded and announced on it"),
		deps.NeedVSphere("pod VMs are moved through vCenter")); err != nil {
		return nil, fmt.Errorf("migration: %w", err)
	}
	return newService(cfg, d.Bus, vmotion.New(d.VSphere.Vim(), d.VSphere.Datacenter), d.Logger)
}
