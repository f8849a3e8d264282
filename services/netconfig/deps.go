package netconfig

import (
	"errors"
	"fmt"

	"github.com/podvisor/podvisor/shared/deps"
)

// Deps are the service's connections (package deps): the bus and the
// vCenter session whose datacenter's hosts and switches the service
// manages, both required.
type Deps = deps.Deps

// New checks the configuration and dependencies and opens the KV buckets.
// Every problem is reported at once, naming the field.
func New(cfg Config, d Deps) (*Service, error) {
	err := d.Require(deps.NeedBus("networks are declared, recorded and announced on it"),
		deps.NeedVSphere("switches and port groups are made in vCenter"))
	if cerr := cfg.Validate(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("config: %w", cerr))
	}
	if err != nil {
		return nil, fmt.Errorf("netconfig: %w", err)
	}
	return newService(cfg, d.Bus, d.VSphere.Vim(), d.VSphere.Datacenter, d.Logger)
}
