package imagecache

import (
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
)

// vsphereSession stands in for shared/vsphere.Session until it lands.
type vsphereSession struct {
	Client     *govmomi.Client
	Datacenter *object.Datacenter
}
