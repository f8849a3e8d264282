package provisioner

import (
	"context"
	"fmt"
	"time"

	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/deps"
)

// Deps are the provisioner's connections (package deps): the bus, which
// carries the events and holds the `pods` bucket, and the vCenter session
// scoped to the datacenter pod VMs live in; both required.
type Deps = deps.Deps

// New checks the configuration and dependencies and opens the `pods`
// bucket, so that a misconfigured process fails at start rather than on
// its first event.
func New(cfg Config, d Deps) (*Service, error) {
	if err := d.Require(deps.NeedBus("pods are admitted, recorded and announced on it"),
		deps.NeedVSphere("pod VMs are made and powered on in vCenter")); err != nil {
		return nil, fmt.Errorf("provisioner: %w", err)
	}
	vms := podvm.New(d.VSphere.Vim(), d.VSphere.Datacenter)
	vms.Logger, vms.BlankEphemeral = d.Logger, !cfg.EphemeralTemplate
	s, err := newService(cfg, d.Bus, vms, d.Logger)
	if err != nil {
		return nil, err
	}
	// The native VM controller runs beside the pod VM controller, on the
	// same connections.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.native, err = nativevm.New(ctx, cfg.NativeVM, d)
	if err != nil {
		return nil, fmt.Errorf("provisioner: %w", err)
	}
	return s, nil
}
