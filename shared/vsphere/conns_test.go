package vsphere_test

import (
	"context"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// handshakes counts the TLS handshakes a server made, and how many of them
// resumed a session.
type handshakes struct{ full, resumed atomic.Int64 }

func (h *handshakes) config() *tls.Config {
	return &tls.Config{VerifyConnection: func(cs tls.ConnectionState) error {
		if cs.DidResume {
			h.resumed.Add(1)
		} else {
			h.full.Add(1)
		}
		return nil
	}}
}

// A session keeps a connection for each of more calls in flight than
// net/http keeps by default (and than it kept before: 64), so a second
// burst as wide as the first dials nothing; and a connection it must dial
// resumes a TLS session instead of a full handshake.
func TestSessionKeepsConnectionsAndResumesTLS(t *testing.T) {
	ctx := context.Background()
	var hs handshakes
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, TLS: hs.config()})
	s := connect(t, configFor(d))
	vc := s.Vim()

	// burst holds n calls in flight at once: each waits a second for
	// updates that do not come, on a property collector of its own (vcsim
	// ends an earlier wait on the same collector).
	const n = 80
	collectors := make([]*property.Collector, n)
	for i := range collectors {
		pc, err := property.DefaultCollector(vc).Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pc.Destroy(context.Background()) })
		collectors[i] = pc
	}
	wait := int32(1)
	burst := func() {
		var wg sync.WaitGroup
		for _, pc := range collectors {
			wg.Go(func() {
				_, err := methods.WaitForUpdatesEx(ctx, vc, &types.WaitForUpdatesEx{
					This: pc.Reference(), Version: "-", Options: &types.WaitOptions{MaxWaitSeconds: &wait}})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	burst()
	dialed := hs.full.Load() + hs.resumed.Load()
	if dialed < n {
		t.Fatalf("%d connections for %d calls in flight", dialed, n)
	}
	if hs.resumed.Load() == 0 {
		t.Errorf("none of %d connections resumed a TLS session (%d full handshakes)", dialed, hs.full.Load())
	}
	burst()
	if again := hs.full.Load() + hs.resumed.Load() - dialed; again != 0 {
		t.Errorf("the second burst of %d calls dialed %d connections, want every one kept idle from the first", n, again)
	}
}
