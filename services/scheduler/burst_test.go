package scheduler_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
)

// TestBurstOnOneHostIsWrittenInFewWrites: a burst of pods that all land
// on one host is reserved in a few writes of the host's ledger entry, not
// one or two per scheduling pass (hostCommitSpacing): each write is a
// synced store of the whole entry. Every pod is still placed, on that
// host, and the entry holds each of them.
func TestBurstOnOneHostIsWrittenInFewWrites(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 1})
	host := e.HostNames("")[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv := e.KV(events.BucketLedger)
	key := events.LedgerEntryKey(host)
	w, err := kv.Watch(ctx, key, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// The pods arrive one after the other as fast as they are published,
	// while the scheduler places them: a pass, then a write, at a time.
	const pods = 60
	keys := make([]string, pods)
	start := time.Now()
	for i := range pods {
		keys[i] = e.accept(testPod(fmt.Sprintf("burst-%02d", i), "10m", "16Mi")).ObjectKey()
	}
	e.EventuallyWithin("every pod decided", 30*time.Second, func() bool { return e.Decided(keys) == pods })
	elapsed := time.Since(start)
	for _, k := range keys {
		if s := e.Scheduled(k); s == nil || s.Host != host {
			t.Fatalf("%s: scheduled %+v, want on %s", k, s, host)
		}
	}
	final, err := e.led.Get(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if len(final.Allocations) != pods {
		t.Errorf("the entry of %s holds %d allocations, want %d", host, len(final.Allocations), pods)
	}
	// Every write of the entry up to the last one, as the watch sees them.
	writes := 0
	timeout := time.After(10 * time.Second)
	for seen := uint64(0); seen < final.Revision; {
		select {
		case en := <-w.Updates():
			if en != nil {
				writes++
				seen = en.Revision()
			}
		case <-timeout:
			t.Fatalf("the watch did not reach revision %d (at %d after %d writes)", final.Revision, seen, writes)
		}
	}
	// Two writes of the host start at least the spacing apart, so the
	// burst's time bounds their number, whatever this machine's speed.
	most := int(elapsed/scheduler.HostCommitSpacing) + 1
	t.Logf("%d pods on one host in %s: %d writes of its ledger entry (at most %d)", pods, elapsed.Round(time.Millisecond), writes, most)
	if writes > most {
		t.Errorf("%d pods on one host in %s took %d writes of its ledger entry, want at most %d (one per %s)", pods, elapsed, writes, most, scheduler.HostCommitSpacing)
	}
}
