package testenv

import (
	"testing"

	"github.com/podvisor/podvisor/shared/bus"
)

// CheckWorkers checks a service's consumer configurations (its router's
// Consumers with its tuning): each stream in want has that many workers,
// every other stream def, and every stream of want has a consumer.
func CheckWorkers(t testing.TB, cfgs []bus.ConsumerConfig, def int, want map[string]int) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range cfgs {
		n, ok := want[c.Stream]
		if !ok {
			n = def
		}
		seen[c.Stream] = true
		if c.Workers != n {
			t.Errorf("consumer on %s: %d workers, want %d", c.Stream, c.Workers, n)
		}
	}
	for s := range want {
		if !seen[s] {
			t.Errorf("no consumer on %s among %d", s, len(cfgs))
		}
	}
	if len(cfgs) <= len(want) {
		t.Errorf("%d consumers, want the tuned ones (%d) and others", len(cfgs), len(want))
	}
}
