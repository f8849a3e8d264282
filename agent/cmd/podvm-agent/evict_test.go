package main

import (
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
)

// An emptyDir on the ephemeral disk that grows past its sizeLimit gets the
// pod evicted, as the kubelet does: its containers killed, the pod Failed
// with reason Evicted whatever its restart policy, the message naming the
// volume and the limit. A volume within its limit is left alone.
func TestAVolumePastItsSizeLimitEvictsThePod(t *testing.T) {
	needGuest(t)
	spec := image.Spec("evict", "Always", 30, nil, []guestchannel.Container{
		withVolume(sh("writer", "dd if=/dev/zero of=/v/small bs=1024 count=256 2>/dev/null; sleep 1; "+
			"dd if=/dev/zero of=/v/big bs=1024 count=3072 2>/dev/null; exec sleep 3600")),
		sh("bystander", "exec sleep 3600"),
	})
	spec.Volumes = []guestchannel.Volume{{Name: "shared", EmptyDir: &guestchannel.EmptyDir{SizeLimitBytes: 1 << 20}}}
	g := guest(t, spec, guesttest.Options{VolumeCheck: 100 * time.Millisecond})

	v := g.Host.Wait("both running, within the limit", wait, func(v guesttest.View) bool {
		return running("writer")(v) && running("bystander")(v)
	})
	if v.Phase != guestchannel.PhaseRunning {
		t.Fatalf("phase %s within the limit, want Running", v.Phase)
	}
	v = g.Host.Wait("evicted", wait, func(v guesttest.View) bool { return v.Phase == guestchannel.PhaseFailed })
	_, reports, _ := g.Host.Snapshot()
	last := reports[len(reports)-1]
	if last.Reason != guestchannel.ReasonEvicted || !strings.Contains(last.Message, `"shared"`) || !strings.Contains(last.Message, `"1Mi"`) {
		t.Errorf("final report: phase %s reason %q message %q, want Evicted naming the volume and its limit", last.Phase, last.Reason, last.Message)
	}
	for _, name := range []string{"writer", "bystander"} {
		if c := v.Container(name); c.State.Kind != guestchannel.StateTerminated || c.Ready {
			t.Errorf("%s = %+v, want killed", name, c)
		}
	}
}
