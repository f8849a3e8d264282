package scheduler

import (
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// A refusal not folded yet is looked at again 200 ms later on the first
// deliveries, then on the consumer's backoff (seconds, then minutes), so
// a provisioner busy for far longer than ten short waits is waited for.
func TestARefusalNotFoldedIsWaitedForLonger(t *testing.T) {
	e := &events.PodNetworkFailed{PodRef: events.PodRef{Namespace: "default", Name: "web"}, Host: "esx-1-01"}
	for n := uint64(1); n <= 10; n++ {
		d, ok := bus.RetryDelay(refusalNotFolded(e, n))
		switch quick := n < refusalQuickTries; {
		case quick && (!ok || d != 200*time.Millisecond):
			t.Errorf("delivery %d: retry after %s (set %v), want 200ms", n, d, ok)
		case !quick && ok:
			t.Errorf("delivery %d: retry after %s, want the consumer's backoff", n, d)
		}
	}
}
