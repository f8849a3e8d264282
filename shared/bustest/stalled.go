package bustest

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// StalledKV is a bucket lost with a NATS node, as its clients see it: a
// watcher never replays anything (the end-of-replay mark never comes) and
// a read never answers before its context ends. Other calls go to the
// bucket it wraps.
type StalledKV struct{ jetstream.KeyValue }

type stalledWatcher struct{ ch chan jetstream.KeyValueEntry }

func (w stalledWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w stalledWatcher) Stop() error                             { return nil }

// WatchAll returns a watcher that never sends.
func (k StalledKV) WatchAll(context.Context, ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return stalledWatcher{ch: make(chan jetstream.KeyValueEntry)}, nil
}

// Get waits for ctx to end.
func (k StalledKV) Get(ctx context.Context, _ string) (jetstream.KeyValueEntry, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
