package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/shared/bus"
)

// getRecord reads one KV record into v; a missing key is a clear not-found
// error (exit 1).
func getRecord(ctx context.Context, b *bus.Bus, bucket, key, what string, v any) error {
	kv, err := b.KV(ctx, bucket)
	if err != nil {
		return err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return &exitError{code: 1, err: fmt.Errorf("%s not found", what)}
	}
	if err != nil {
		return err
	}
	return json.Unmarshal(e.Value(), v)
}

// readRecords reads every value of a KV bucket as T (values that do not
// decode are skipped: another version's records are not this command's to
// judge).
func readRecords[T any](ctx context.Context, b *bus.Bus, bucket string) ([]*T, error) {
	kv, err := b.KV(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bucket, err)
	}
	defer func() { _ = w.Stop() }()
	var out []*T
	for e := range w.Updates() {
		if e == nil {
			break
		}
		v := new(T)
		if json.Unmarshal(e.Value(), v) == nil {
			out = append(out, v)
		}
	}
	return out, nil
}
