package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func newCheckCmd(g *globals) *cobra.Command {
	var (
		namespace string
		wait      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check guestcluster NAME",
		Short: "Check a guest cluster's compatibility with the infrastructure and the vCenter",
		Long: `check guestcluster publishes guestcluster.check.requested; the guest cluster controller checks the
cluster's version (its requires document) against the offers of podvisor's services and of the
vCenter (version, build, API features), posts the result as a vCenter event on the cluster
(govc events) and answers guestcluster.compatibility. check prints the verdict and each unmet
requirement, and exits 1 when the cluster is incompatible.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "guestcluster" && args[0] != "guestclusters" && args[0] != "gc" {
				return usageError("cannot check %q: want guestcluster", args[0])
			}
			req := &events.GuestClusterCheckRequested{ID: uuid.NewString(), Namespace: namespace, Name: args[1]}
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				// Only a guest cluster podvisor knows can be checked: its
				// record holds the version the check is about.
				kv, err := b.KV(ctx, events.BucketGuestClusters)
				if err != nil {
					return err
				}
				if _, err := kv.Get(ctx, events.GuestClusterRecordKey(namespace, args[1])); errors.Is(err, jetstream.ErrKeyNotFound) {
					return &exitError{code: 1, err: fmt.Errorf("guestcluster %s/%s not found", namespace, args[1])}
				} else if err != nil {
					return fmt.Errorf("read guestcluster %s/%s: %w", namespace, args[1], err)
				}
				answers, stop, err := followEvents(ctx, b, events.StreamGuestClusters, events.SubjectGuestClusterCompatibility)
				if err != nil {
					return err
				}
				defer stop()
				ev, err := bus.NewEvent(CLISource, events.TypeGuestClusterCheckRequested, req.ObjectKey(), req)
				if err != nil {
					return err
				}
				if err := b.Publish(ctx, ev); err != nil {
					return err
				}
				timedOut := func() error {
					return &exitError{code: 1, err: fmt.Errorf("guestcluster %s/%s: no compatibility answer within %s (is the guest cluster controller running?)", namespace, args[1], wait)}
				}
				return awaitAnswers(ctx, wait, timedOut, func(ev event.Event) (bool, error) {
					var r events.GuestClusterCompatibility
					if ev.DataAs(&r) != nil || r.CheckID != req.ID {
						return false, nil
					}
					fmt.Fprintln(g.stdout, r.Message)
					for _, u := range r.Unmet {
						have := u.Have
						if have == "" {
							have = "not offered"
						}
						fmt.Fprintf(g.stdout, "  unmet: %s %s %s (%s)\n", u.Provider, u.Name, u.Want, have)
					}
					if r.VCenterEventKey != 0 {
						fmt.Fprintf(g.stdout, "vCenter event %d posted on the cluster\n", r.VCenterEventKey)
					}
					if !r.Compatible {
						return true, &exitError{code: 1, err: fmt.Errorf("guestcluster %s/%s is incompatible", namespace, args[1])}
					}
					return true, nil
				}, answers)
			})
		},
		Annotations: requests(),
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of the guest cluster")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the answer")
	return cmd
}
