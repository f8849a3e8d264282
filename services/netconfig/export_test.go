package netconfig

import (
	"log/slog"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"

	"github.com/podvisor/podvisor/shared/bus"
)

// NewForTest builds the service from a vCenter client directly, as New does
// from a vsphere.Session.
func NewForTest(cfg Config, b *bus.Bus, vc *vim25.Client, dc *object.Datacenter, log *slog.Logger) (*Service, error) {
	return newService(cfg, b, vc, dc, log)
}
