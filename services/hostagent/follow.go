package hostagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// FollowHosts calls add once for every host of the inventory, as the
// scheduler records it (the hosts bucket), those there now and those that
// appear later, until ctx ends: how a process serving EveryHost learns its
// hosts. The watch is made again when it fails or ends. A host whose agent
// add cannot make is reported to failed and skipped, not the end of the
// others. A host that leaves the inventory keeps its agent, idle, until
// the process restarts.
func FollowHosts(ctx context.Context, b *bus.Bus, add func(host string) error, failed func(host string, err error)) error {
	seen := map[string]bool{}
	for delay := time.Second; ctx.Err() == nil; delay = min(2*delay, 30*time.Second) {
		if err := followHosts(ctx, b, seen, add, failed); err != nil && ctx.Err() == nil {
			failed("", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	return nil
}

func followHosts(ctx context.Context, b *bus.Bus, seen map[string]bool, add func(string) error, failed func(string, error)) error {
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		return fmt.Errorf("hostagent: hosts bucket: %w", err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("hostagent: watch the hosts: %w", err)
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			continue // the hosts there now have all been given
		}
		var r events.HostRecord
		if err := json.Unmarshal(e.Value(), &r); err != nil || r.Name == "" {
			continue // not a host record this agent can read; the scheduler owns them
		}
		if seen[r.Name] {
			continue
		}
		seen[r.Name] = true
		if err := add(r.Name); err != nil {
			failed(r.Name, err)
		}
	}
	return errors.New("hostagent: the watch of the hosts ended")
}
