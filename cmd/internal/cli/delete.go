package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func newDeleteCmd(g *globals) *cobra.Command {
	var (
		namespace string
		wait      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "delete pod|network NAME",
		Short: "Request the deletion of a pod or a network",
		Long: `delete publishes pod.delete.requested or network.delete.requested. It checks first that the
object exists, so a typo fails here with a clear message; the services do the rest (a network still
used by pods is refused by network-config: see 'podvisor get networks').`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, name := args[0], args[1]
			ctx := cmd.Context()
			switch kind {
			case "pod", "pods", "po":
				return g.deleteObject(ctx, events.BucketPods, events.PodRecordKey(namespace, name), "pod "+namespace+"/"+name,
					events.TypePodDeleteRequested, events.PodKey(namespace, name),
					&events.PodDeleteRequested{Namespace: namespace, Name: name})
			case "network", "networks", "net":
				return g.deleteNetwork(ctx, name, wait)
			default:
				return usageError("cannot delete %q: want pod or network", kind)
			}
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of the pod")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "for a network: how long to wait for network-config's answer (0: do not wait)")
	return cmd
}

func (g *globals) deleteObject(ctx context.Context, bucket, key, what, ceType, subject string, payload events.Payload) error {
	if err := payload.Validate(); err != nil {
		return usageError("%v", err)
	}
	b, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	kv, err := b.KV(ctx, bucket)
	if err != nil {
		return err
	}
	if _, err := kv.Get(ctx, key); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%s not found", what)
		}
		return err
	}
	ev, err := bus.NewEvent(CLISource, ceType, subject, payload)
	if err != nil {
		return err
	}
	if err := b.Publish(ctx, ev); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s deletion requested\n", what)
	return nil
}

// deleteNetwork requests the deletion and, unless wait is 0, waits for
// network-config's answer: deleted, or refused (for example while pods use
// the network), which exits non-zero with the reason.
func (g *globals) deleteNetwork(ctx context.Context, name string, wait time.Duration) error {
	if wait <= 0 {
		return g.deleteObject(ctx, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name,
			events.TypeNetworkDeleteRequested, name, &events.NetworkDeleteRequested{Name: name})
	}
	b, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	answers, stop, err := followEvents(ctx, b, events.StreamNetworks, events.SubjectNetworkDeleted, events.SubjectNetworkDeleteRejected)
	if err != nil {
		return err
	}
	defer stop()
	if err := g.deleteObject(ctx, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name,
		events.TypeNetworkDeleteRequested, name, &events.NetworkDeleteRequested{Name: name}); err != nil {
		return err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			fmt.Fprintf(g.stdout, "no answer from network-config within %s; see 'podvisor get networks'\n", wait)
			return nil
		case ev, ok := <-answers:
			if !ok {
				return errors.New("event stream closed while waiting for network-config")
			}
			if ev.Subject() != name {
				continue
			}
			if ev.Type() == events.TypeNetworkDeleted {
				fmt.Fprintf(g.stdout, "network %s deleted\n", name)
				return nil
			}
			var rej events.NetworkDeleteRejected
			_ = ev.DataAs(&rej)
			return &exitError{code: 1, err: fmt.Errorf("deletion of network %s refused: %s: %s", name, rej.Reason, rej.Message)}
		}
	}
}
