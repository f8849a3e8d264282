package bus

import (
	"testing"

	"github.com/podvisor/podvisor/events"
)

// A per-object event travels on its type's subject followed by its
// subject attribute; a consumer accepts it only there.
func TestPerObjectSubjects(t *testing.T) {
	rt, err := routeOf(events.TypeNetworkHostDesired)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		key, want string
		bad       bool
	}{
		{key: "esx-1-01", want: "pv.network.host.desired.esx-1-01"},
		{key: "esx01.lab.example", want: "pv.network.host.desired.esx01.lab.example"},
		{key: "a..b", bad: true},
		{key: "", bad: true},
		{key: "x.", bad: true},
	} {
		ev, err := NewEvent("podvisor/netconfig", events.TypeNetworkHostDesired, tt.key, &events.NetworkHostDesired{Host: "esx-1-01", Digest: events.HostStateDigest(nil)})
		if err != nil {
			t.Fatal(err)
		}
		got, err := rt.subjectOf(&ev)
		switch {
		case tt.bad && err == nil:
			t.Errorf("%q: routed to %s, want an error", tt.key, got)
		case !tt.bad && (err != nil || got != tt.want):
			t.Errorf("%q: %q, %v; want %s", tt.key, got, err, tt.want)
		case !tt.bad:
			if !rt.carries(&ev, tt.want) || rt.carries(&ev, events.SubjectNetworkHostDesired) || rt.carries(&ev, tt.want+".x") {
				t.Errorf("%q: carries accepts the wrong subjects", tt.key)
			}
		}
	}
	// A kind with one subject is unchanged.
	pod, _ := routeOf(events.TypePodAccepted)
	ev, _ := NewEvent("podvisor/provisioner", events.TypePodAccepted, "shop/web", map[string]any{})
	if got, err := pod.subjectOf(&ev); err != nil || got != events.SubjectPodAccepted {
		t.Errorf("pod.accepted routed to %q, %v", got, err)
	}
}
