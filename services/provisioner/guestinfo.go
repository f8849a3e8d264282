package provisioner

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	corev1 "k8s.io/api/core/v1"
)

// Guestinfo keys. The in-guest agent reads them with vmware-rpctool
// ("info-get guestinfo.podvisor.uid") and starts the containers from them;
// `govc vm.info -e` shows them to a person.
//
//	guestinfo.podvisor.uid                       pod uid
//	guestinfo.podvisor.namespace / .name         pod key
//	guestinfo.podvisor.containers                container names, comma separated, in order
//	guestinfo.podvisor.container.<i>.name        container i's name
//	guestinfo.podvisor.container.<i>.image       image reference as written
//	guestinfo.podvisor.container.<i>.digest      resolved manifest digest
//	guestinfo.podvisor.container.<i>.command     JSON array
//	guestinfo.podvisor.container.<i>.args        JSON array
//	guestinfo.podvisor.container.<i>.env         JSON array of Kubernetes EnvVar
//	guestinfo.podvisor.container.<i>.ports       JSON array of Kubernetes ContainerPort
//	guestinfo.podvisor.container.<i>.workingdir  working directory, when set
//	guestinfo.podvisor.container.<i>.rootfs      JSON RootFS: the disk layout of its root filesystem
//	guestinfo.podvisor.networks                  number of NICs
//	guestinfo.podvisor.network.<i>.{name,ip,prefix,gateway,mac}
const (
	guestinfoPrefix = "guestinfo.podvisor."
	keyUID          = podvm.UIDKey
	keyNamespace    = podvm.NamespaceKey
	keyName         = podvm.PodKey
	keyContainers   = guestinfoPrefix + "containers"
	keyNetworks     = guestinfoPrefix + "networks"
)

// RootFS is how a container's root filesystem is laid out on the pod VM's
// disks: an overlay whose upper (writable) layer is the container's own
// child disk and whose lower layers are the image disk chain that disk
// inherits from. The guest agent mounts Device and finds the chain's layer
// directories in it, base first.
type RootFS struct {
	// Device is the guest-visible disk, for example "scsi0:1".
	Device string `json:"device"`
	// Writable is the datastore path of the container's read/write disk.
	Writable string `json:"writable"`
	// Image is the image disk chain, base layer first; the last entry is the
	// writable disk's parent.
	Image []string `json:"image"`
	// Mount is the filesystem assembly: always "overlay" here.
	Mount string `json:"mount"`
}

// guestinfo builds the ExtraConfig of a pod VM from its record.
func guestinfo(r *events.PodRecord, datastore string) (map[string]string, error) {
	m := map[string]string{
		keyUID:       r.UID,
		keyNamespace: r.Namespace,
		keyName:      r.Name,
	}
	images := imagesByContainer(r)
	names := make([]string, 0, len(r.Pod.Spec.Containers))
	for i, c := range r.Pod.Spec.Containers {
		names = append(names, c.Name)
		img, ok := images[c.Name]
		if !ok {
			return nil, fmt.Errorf("container %s: no prepared image", c.Name)
		}
		p := guestinfoPrefix + "container." + strconv.Itoa(i) + "."
		m[p+"name"] = c.Name
		m[p+"image"] = c.Image
		m[p+"digest"] = img.Digest
		for k, v := range map[string]any{"command": nonNil(c.Command), "args": nonNil(c.Args), "env": envOf(c), "ports": portsOf(c)} {
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("container %s %s: %w", c.Name, k, err)
			}
			m[p+k] = string(b)
		}
		if c.WorkingDir != "" {
			m[p+"workingdir"] = c.WorkingDir
		}
		rootfs, err := json.Marshal(RootFS{
			Device:   podvm.DiskDevice(i),
			Writable: podvm.ChildDiskPath(datastore, r.VMName, c.Name),
			Image:    img.Chain,
			Mount:    "overlay",
		})
		if err != nil {
			return nil, fmt.Errorf("container %s rootfs: %w", c.Name, err)
		}
		m[p+"rootfs"] = string(rootfs)
	}
	m[keyContainers] = strings.Join(names, ",")
	m[keyNetworks] = strconv.Itoa(len(r.Attachments))
	for i, a := range r.Attachments {
		p := guestinfoPrefix + "network." + strconv.Itoa(i) + "."
		m[p+"name"] = a.Network
		m[p+"ip"] = a.IP
		m[p+"prefix"] = strconv.Itoa(a.PrefixLength)
		if a.Gateway != "" {
			m[p+"gateway"] = a.Gateway
		}
		m[p+"mac"] = a.MAC
	}
	return m, nil
}

func imagesByContainer(r *events.PodRecord) map[string]events.ContainerImage {
	out := make(map[string]events.ContainerImage, len(r.Images))
	for _, img := range r.Images {
		out[img.Container] = img
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func envOf(c corev1.Container) []corev1.EnvVar {
	if c.Env == nil {
		return []corev1.EnvVar{}
	}
	return c.Env
}

func portsOf(c corev1.Container) []corev1.ContainerPort {
	if c.Ports == nil {
		return []corev1.ContainerPort{}
	}
	return c.Ports
}
