package provisioner

import (
	"testing"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A pod that fails gives its addresses back (network-config releases every
// one on pod.failed, and another pod may hold one next): its status shows
// none, where it showed the address before.
func TestAFailedPodShowsNoAddress(t *testing.T) {
	e, svc, host := startOnFirstHost(t)
	acc := e.request(testPod("badt"))
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: acc.PodRef, Host: host, Cluster: simtest.ClusterOf(e.T, e.DC, host), Datastores: []string{sim.SharedDatastore},
	})
	e.Send("podvisor/netconfig", events.TypePodNetworkAttached, networkAttached(acc, host))
	r := e.waitRecord(svc, "default", "badt", func(r *events.PodRecord) bool { return r.IP != "" })
	if st := r.KubernetesPod().Status; st.PodIP == "" || len(st.PodIPs) == 0 {
		t.Fatalf("attached pod's status shows no address: %+v", st)
	}
	e.Send("podvisor/imagecache", events.TypePodImagesFailed, &events.PodImagesFailed{
		PodRef: acc.PodRef, Container: "app", Image: acc.Pod.Spec.Containers[0].Image, Reason: "ImageNotFound", Message: "no such image",
	})
	testenv.Wait(e.Env, func(p *events.PodFailed) bool { return p.UID == acc.UID })
	r = e.waitRecord(svc, "default", "badt", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseFailed })
	if st := r.KubernetesPod().Status; r.IP != "" || st.PodIP != "" || len(st.PodIPs) != 0 {
		t.Errorf("failed pod shows podIP %q, podIPs %v (record ip %q); want none: its addresses were released", st.PodIP, st.PodIPs, r.IP)
	}
	if c, _ := r.Condition(events.PodConditionNetworkAttached); c.Status != events.ConditionFalse {
		t.Errorf("NetworkAttached %s (%s) after the addresses were released; want False", c.Status, c.Message)
	}
}
