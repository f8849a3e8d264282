package bus_test

import (
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// StoredAfter finds, in the stream's order, the first event of a type about
// one object stored after a point: not another object's, not one whose
// subject disagrees with its payload (no handler takes it), and only one the
// caller's match accepts.
func TestStoredAfter(t *testing.T) {
	b := bustest.Start(t)
	ctx := testContext(t)
	publish := func(ev event.Event) uint64 {
		t.Helper()
		seq, err := b.PublishSeq(ctx, ev)
		if err != nil {
			t.Fatalf("publish %s: %v", ev.Type(), err)
		}
		return seq
	}
	del := func(subject string, p *events.PodDeleteRequested) uint64 {
		t.Helper()
		return publish(mustEvent(t, events.TypePodDeleteRequested, subject, p))
	}
	req := publish(mustEvent(t, events.TypePodRequested, "default/a", map[string]any{"pod": map[string]any{"metadata": map[string]any{"name": "a"}}}))
	otherPod := del("default/b", &events.PodDeleteRequested{Name: "b"})
	del("default/a", &events.PodDeleteRequested{Name: "c"}) // subject and payload disagree: about neither
	withUID := del("default/a", &events.PodDeleteRequested{Name: "a", UID: "u-old"})
	plain := del("default/a", &events.PodDeleteRequested{Name: "a"})

	noUID := func(d *events.PodDeleteRequested) bool { return d.UID == "" }
	for _, tc := range []struct {
		name  string
		key   string
		after uint64
		match func(*events.PodDeleteRequested) bool
		want  uint64 // 0: none
	}{
		{"the first about the key", "default/a", req, nil, withUID},
		{"the first the match accepts", "default/a", req, noUID, plain},
		{"another key", "default/b", req, nil, otherPod},
		{"a subject that is not the payload's counts for neither", "default/c", req, nil, 0},
		{"nothing after the last", "default/a", plain, nil, 0},
		{"only what was stored after", "default/b", otherPod, nil, 0},
		{"a message not from the stream", "default/a", 0, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := bus.StoredAfter(ctx, b.JetStream(), tc.key, tc.after, tc.match)
			if err != nil {
				t.Fatal(err)
			}
			var got uint64
			if m != nil {
				got = m.Sequence
			}
			if got != tc.want {
				t.Errorf("StoredAfter(%s, after %d) = sequence %d, want %d (0: none)", tc.key, tc.after, got, tc.want)
			}
		})
	}
}
