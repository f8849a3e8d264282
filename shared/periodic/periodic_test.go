package periodic_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podvisor/podvisor/shared/periodic"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

func TestEveryCallsUntilCancelAndLogsFailures(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	stopAfter(t, "Every", &calls, 3, cancel, func() {
		periodic.Every(ctx, 5*time.Millisecond, log, "resync failed", func(context.Context) error {
			if calls.Add(1) == 2 {
				return errors.New("vCenter unreachable")
			}
			return nil
		})
	})
	if got := logs.String(); !strings.Contains(got, "resync failed") || !strings.Contains(got, "vCenter unreachable") || strings.Count(got, "failed") != 1 {
		t.Errorf("logs = %q, want the one failure named", got)
	}
}

func TestEveryDoesNotLogTheErrorOfStopping(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	periodic.Every(ctx, time.Millisecond, log, "sweep failed", func(ctx context.Context) error {
		cancel()
		return ctx.Err()
	})
	if got := logs.String(); got != "" {
		t.Errorf("logged %q for a call ended by the stop", got)
	}
}

func TestEveryAfterCallsFirstAtStartThenEveryInterval(t *testing.T) {
	log := slog.New(slog.NewTextHandler(&syncbuf.Buffer{}, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan time.Time, 16)
	start := time.Now()
	go periodic.EveryAfter(ctx, 0, time.Hour, log, "list failed", func(context.Context) error {
		calls <- time.Now()
		return nil
	})
	select {
	case at := <-calls:
		// The interval is an hour: only the call at start can have come.
		if waited := at.Sub(start); waited > time.Minute {
			t.Fatalf("first call after %s, want it at once", waited)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no call at start")
	}
}

func TestEveryAfterKeepsTheIntervalAfterTheFirstCall(t *testing.T) {
	log := slog.New(slog.NewTextHandler(&syncbuf.Buffer{}, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	// The first call and then one every interval.
	stopAfter(t, "EveryAfter", &calls, 3, cancel, func() {
		periodic.EveryAfter(ctx, time.Millisecond, 5*time.Millisecond, log, "sweep failed", func(context.Context) error {
			calls.Add(1)
			return nil
		})
	})
}

// stopAfter runs loop, a call of name whose function counts its calls in
// calls, until it has made n calls, then cancels it and checks that it
// returns.
func stopAfter(t *testing.T, name string, calls *atomic.Int32, n int32, cancel context.CancelFunc, loop func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		loop()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for calls.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d calls after 10s, want at least %d", name, calls.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return after cancel", name)
	}
}

// EveryOrWake calls on a wake long before its first tick.
func TestEveryOrWakeCallsOnAWake(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	wake := make(chan struct{})
	called := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		periodic.EveryOrWake(ctx, time.Hour, wake, slog.New(slog.DiscardHandler), "test", func(context.Context) error {
			called <- struct{}{}
			return nil
		})
	}()
	select {
	case wake <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop does not take a wake")
	}
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("no call after a wake (the tick is an hour away)")
	}
	cancel()
	<-done
}

// A failed call is tried again after the retry delay (doubling), not after
// the interval: with an interval of an hour, three failures in a row and
// then a success make four calls in about 10+20+40 ms.
func TestEveryAfterRetryingTriesAFailedCallAgainSooner(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := make(chan struct{}, 16)
	var n atomic.Int32
	go periodic.EveryAfterRetrying(ctx, 0, time.Hour, 10*time.Millisecond, log, "repair incomplete", func(context.Context) error {
		defer func() { calls <- struct{}{} }()
		if n.Add(1) <= 3 {
			return errors.New("port group not found")
		}
		return nil
	})
	for i := range 4 {
		select {
		case <-calls:
		case <-time.After(time.Minute):
			t.Fatalf("call %d did not come: a failed call waited for the interval (an hour)", i+1)
		}
	}
	if got := logs.String(); strings.Count(got, "repair incomplete") != 3 || !strings.Contains(got, "again_in=40ms") {
		t.Errorf("logs = %q, want the three failures with their back-off", got)
	}
}
