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
	run(ctx, nil, nil, d, log, what, fn)
}

// EveryOrWake is Every with one more reason to call: wake, a signal that
// there is work before the next tick (a pod now due, a host record now
// dirty). The ticks keep their rhythm.
func EveryOrWake(ctx context.Context, d time.Duration, wake <-chan struct{}, log *slog.Logger, what string, fn func(context.Context) error) {
	run(ctx, nil, wake, d, log, what, fn)
}

// EveryAfter is Every with one more call, first after start (0: at once):
// a loop that should not wait a whole interval after the service starts
// (a repair that matters most after a restart, a list the service needs
// before it can do anything). The calls every d keep their rhythm, counted
// from the start as in Every.
func EveryAfter(ctx context.Context, first, d time.Duration, log *slog.Logger, what string, fn func(context.Context) error) {
	f := time.NewTimer(first)
	defer f.Stop()
	run(ctx, f.C, nil, d, log, what, fn)
}

// EveryAfterRetrying is EveryAfter whose failed calls are tried again
// sooner than the next interval: after retry, doubling with each failure
// in a row up to d. A repair at start that failed on something another
// service is making at that moment (a port group network-config creates
// in a rebuilt datacenter, an image still being pushed) then waits seconds,
// not a whole interval. After a success the calls come every d again,
// counted from that call.
func EveryAfterRetrying(ctx context.Context, first, d, retry time.Duration, log *slog.Logger, what string, fn func(context.Context) error) {
	t := time.NewTimer(first)
	defer t.Stop()
	wait := retry
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := fn(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Warn(what, "err", err, "again_in", wait)
			t.Reset(wait)
			wait = min(2*wait, d)
		default:
			wait = retry
			t.Reset(d)
		}
	}
}

// run calls fn on each tick of a ticker of d, when first fires and on each
// wake (a nil channel never fires).
func run(ctx context.Context, first <-chan time.Time, wake <-chan struct{}, d time.Duration, log *slog.Logger, what string, fn func(context.Context) error) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-first:
		case <-wake:
		case <-t.C:
		}
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			log.Warn(what, "err", err)
		}
	}
}
