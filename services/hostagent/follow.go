package hostagent

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// FollowHosts calls add once for every host of the inventory, as the
// scheduler records it (the hosts bucket), those there now and those that
// appear later, until ctx ends or add fails: how a process serving
// EveryHost learns its hosts. A host that leaves the inventory keeps its
// agent, idle, until the process restarts.
func FollowHosts(ctx context.Context, b *bus.Bus, add func(host string) error) error {
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		return fmt.Errorf("hostagent: hosts bucket: %w", err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("hostagent: watch the hosts: %w", err)
	}
	defer w.Stop()
	seen := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
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
				return err
			}
		}
	}
}
