package scheduler

import (
	"testing"
	"time"
)

// The wait for a refusal's fold doubles from 200 ms up to 5 s, so ten
// deliveries wait for a provisioner busy for well over the 2 s that ten
// fixed waits of 200 ms gave it.
func TestRefusalFoldDelayBacksOff(t *testing.T) {
	want := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second}
	var total time.Duration
	for n := uint64(1); n <= 10; n++ {
		d := refusalFoldDelay(n)
		if int(n) <= len(want) && d != want[n-1] {
			t.Errorf("delay after delivery %d = %s, want %s", n, d, want[n-1])
		}
		total += d
	}
	if total < 20*time.Second {
		t.Errorf("ten deliveries wait %s in all, want at least 20s", total)
	}
}
