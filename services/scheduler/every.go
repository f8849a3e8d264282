package scheduler

import (
	"context"
	"time"
)

// every calls fn each interval, and early whenever wake fires (a signal
// that there is work before the next tick), until ctx ends. The loops
// that retry pods and flush host records both work this way.
func every(ctx context.Context, interval time.Duration, wake <-chan struct{}, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
		}
		fn()
	}
}
