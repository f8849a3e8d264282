package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/podstream"
)

// podHost reads the pod record and returns the pod's uid and host, the
// host whose agent answers logs and exec for it.
func podHost(ctx context.Context, b *bus.Bus, namespace, name string) (uid, host string, err error) {
	kv, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return "", "", err
	}
	e, err := kv.Get(ctx, events.PodRecordKey(namespace, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", "", fmt.Errorf("pod %s/%s not found", namespace, name)
	}
	if err != nil {
		return "", "", err
	}
	var r events.PodRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return "", "", fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	if r.Host == "" {
		// A pod that has ended will not get a host: no "yet" for it.
		if r.Phase == events.PodPhaseFailed || r.Phase == events.PodPhaseSucceeded {
			return "", "", fmt.Errorf("pod %s/%s is not on a host (phase %s)", namespace, name, r.Phase)
		}
		return "", "", fmt.Errorf("pod %s/%s is not on a host yet (phase %s)", namespace, name, r.Phase)
	}
	return r.UID, r.Host, nil
}

// podQuery finds the pod's host in its record and streams the request
// (withUID sets the pod's uid on it and returns it) to that host's agent on
// subject(host), writing its output to stdout.
func (g *globals) podQuery(ctx context.Context, namespace, name string, subject func(host string) string, withUID func(uid string) any, stdin io.Reader, stdout io.Writer) (*int32, error) {
	b, err := g.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	uid, host, err := podHost(ctx, b, namespace, name)
	if err != nil {
		return nil, err
	}
	return podstream.Run(ctx, b.Conn(), subject(host), withUID(uid), stdin, stdout, g.stderr)
}
