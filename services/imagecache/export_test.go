package imagecache

import (
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
)

// SessionForTest builds the VSphere dependency from a client and datacenter.
func SessionForTest(c *govmomi.Client, dc *object.Datacenter) *vsphereSession {
	return &vsphereSession{Client: c, Datacenter: dc}
}
