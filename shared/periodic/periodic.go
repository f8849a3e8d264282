package periodic

import (
	"context"
	"log/slog"
	"time"
)

// Every calls fn every d (the first call after d, not at once) until ctx
// ends. A call is never concurrent with the previous one: a slow call
// delays the next tick rather than piling calls up. An error fn returns
// while ctx is alive is logged at warn level with the message what; one
// that comes from the service stopping is not.
func Every(ctx context.Context, d time.Duration, log *slog.Logger, what string, fn func(context.Context) error) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			log.Warn(what, "err", err)
		}
	}
}
