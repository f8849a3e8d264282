package imagecache_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/testenv"
)

// An image is marked announced only once its image.pulled is stored: when
// the publish fails (the IMAGES stream refuses every message for a while,
// as a crash between the two steps would lose it), the redelivered pod event announces the
// image, and the stream then holds exactly one image.pulled for it.
func TestImagePulledSurvivesAFailedPublish(t *testing.T) {
	e := startEnv(t, func(c *imagecache.Config) {
		c.BackOff = []time.Duration{300 * time.Millisecond}
		c.MaxDeliver = 50
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := e.Bus.JetStream()
	st, err := js.Stream(ctx, events.StreamImages)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	blocked := cfg
	blocked.MaxMsgSize = 16 // every image event is larger: refused at once
	if _, err := js.UpdateStream(ctx, blocked); err != nil {
		t.Fatal(err)
	}
	seq := e.accept("web-0", e.reg.Ref("podvisor/web:1.0"))
	// The pod event is tried again: its first image.pulled had no stream.
	e.EventuallyWithin("the image cache to retry after the failed image.pulled", 30*time.Second, func() bool {
		c, err := js.Consumer(ctx, events.StreamPods, imagecache.Name+"-"+events.StreamPods)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumRedelivered > 0
	})
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	e.handled(seq)
	st, err = js.Stream(ctx, events.StreamImages)
	if err != nil {
		t.Fatal(err)
	}
	var pulled int
	for s := uint64(1); s <= st.CachedInfo().State.LastSeq; s++ {
		raw, err := st.GetMsg(ctx, s)
		if err != nil {
			continue
		}
		ev, err := bus.DecodeMessage(raw)
		if err == nil && ev.Type() == events.TypeImagePulled {
			pulled++
		}
	}
	if pulled != 1 {
		t.Errorf("%d image.pulled stored after the failed publish, want 1", pulled)
	}
	ready := testenv.In[events.PodImagesReady](t, e.Events.Seen(), nil)
	if !slices.ContainsFunc(ready, func(r *events.PodImagesReady) bool { return r.Name == "web-0" }) {
		t.Error("web-0 has no pod.images.ready")
	}
}
