package provisioner

import (
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// facts publishes what scheduler, image cache and network-config would say
// about an accepted pod, placing it on host.
func (e *env) facts(acc *events.PodAccepted, host string) {
	e.T.Helper()
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: acc.PodRef, Host: host, Cluster: simtest.ClusterOf(e.T, e.DC, host),
		Datastores: []string{sim.SharedDatastore},
	})
	e.Send("podvisor/imagecache", events.TypePodImagesReady, imagesReady(acc))
	e.Send("podvisor/netconfig", events.TypePodNetworkAttached, networkAttached(acc, host))
}

// provision requests pod, says the facts of its placement on host and
// waits until its VM is ready: where most tests of a running pod start.
func (e *env) provision(pod *corev1.Pod, host string) (*events.PodAccepted, *events.PodVMReady) {
	e.T.Helper()
	acc := e.request(pod)
	e.facts(acc, host)
	return acc, testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == acc.UID })
}

func imagesReady(acc *events.PodAccepted) *events.PodImagesReady {
	ir := &events.PodImagesReady{PodRef: acc.PodRef}
	for i, c := range slices.Concat(acc.Pod.Spec.InitContainers, acc.Pod.Spec.Containers) {
		top := imageDisk(c.Name)
		ir.Containers = append(ir.Containers, events.ContainerImage{
			Container: c.Name, Image: c.Image,
			Digest:    fmt.Sprintf("sha256:%064x", i+1),
			Datastore: sim.SharedDatastore, Disk: top,
			Chain: []string{imageDisk("base"), top},
		})
	}
	return ir
}

func networkAttached(acc *events.PodAccepted, host string) *events.PodNetworkAttached {
	na := &events.PodNetworkAttached{PodRef: acc.PodRef, Host: host}
	for i, n := range acc.Networks {
		na.Attachments = append(na.Attachments, events.NetworkAttachment{
			Network: n, PortGroup: "pv-" + n, IP: fmt.Sprintf("10.%d.0.%d", i, 10+len(acc.Name)),
			PrefixLength: 24, Gateway: fmt.Sprintf("10.%d.0.1", i), MAC: fmt.Sprintf("00:50:56:0%d:00:%02x", i, len(acc.Name)),
		})
	}
	return na
}
