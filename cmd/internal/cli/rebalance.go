package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/rebalance"
	"github.com/podvisor/podvisor/shared/bus"
)

func newRebalanceCmd(g *globals) *cobra.Command {
	var (
		o      rebalance.Options
		dryRun bool
		wait   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rebalance",
		Short: "Move pods from the most to the least loaded hosts",
		Long: `rebalance plans migrations that even out the hosts' load (the larger of the CPU and memory shares
reserved on each host): pods move from the most loaded hosts to the least loaded ones that have
room, carry every network of the pod and mount its datastores. Each move is a migration with a
named target, so the scheduler reserves the room and the migration service runs the moves within
its limits (2 per source host, 5 per cluster at once). --dry-run prints the plan only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Threshold < 0 || o.Threshold >= 1 {
				return usageError("--threshold %v: want a share between 0 and 1, e.g. 0.1", o.Threshold)
			}
			if o.MaxMoves < 1 {
				return usageError("--max %d: want at least 1", o.MaxMoves)
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				hosts, err := readRecords[events.HostRecord](ctx, b, events.BucketHosts)
				if err != nil {
					return err
				}
				pods, err := readRecords[events.PodRecord](ctx, b, events.BucketPods)
				if err != nil {
					return err
				}
				avail, err := readRecords[events.NetworkAvailability](ctx, b, events.BucketNetHosts)
				if err != nil {
					return err
				}
				nets := map[string]*events.NetworkAvailability{}
				for _, a := range avail {
					nets[a.Network] = a
				}
				plan := rebalance.Plan(hosts, pods, nets, o)
				if len(plan) == 0 {
					fmt.Fprintln(g.stdout, "the hosts are balanced: nothing to move")
					return nil
				}
				for _, m := range plan {
					fmt.Fprintf(g.stdout, "plan: %s\n", m)
				}
				if dryRun {
					return nil
				}
				return runRebalance(ctx, b, plan, wait, g)
			})
		},
		Annotations: requests(),
	}
	cmd.Flags().IntVar(&o.MaxMoves, "max", 10, "most migrations to plan")
	cmd.Flags().Float64Var(&o.Threshold, "threshold", 0.1, "load spread (0-1) under which the hosts count as balanced")
	cmd.Flags().BoolVar(&o.SameCluster, "same-cluster", false, "keep every pod in its cluster")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan, move nothing")
	cmd.Flags().DurationVar(&wait, "wait", 5*time.Minute, "how long to wait for the moves (0: do not wait)")
	return cmd
}

func runRebalance(ctx context.Context, b *bus.Bus, plan []rebalance.Move, wait time.Duration, g *globals) error {
	var results <-chan event.Event
	if wait > 0 {
		ch, stop, err := followEvents(ctx, b, events.StreamMigrations, events.SubjectMigrationCompleted, events.SubjectMigrationFailed, events.SubjectMigrationRejected)
		if err != nil {
			return err
		}
		defer stop()
		results = ch
	}
	pending := map[string]rebalance.Move{}
	for _, m := range plan {
		req := &events.MigrationRequested{MigrationRef: events.MigrationRef{ID: "rebalance-" + uuid.NewString(), Namespace: m.Namespace, Pod: m.Pod}, TargetHost: m.To}
		ev, err := bus.NewEvent(CLISource, events.TypeMigrationRequested, req.ObjectKey(), req)
		if err != nil {
			return err
		}
		if err := b.Publish(ctx, ev); err != nil {
			return fmt.Errorf("migration of %s: %w", req.ObjectKey(), err)
		}
		pending[req.ID] = m
	}
	fmt.Fprintf(g.stdout, "%d migrations requested\n", len(plan))
	if results == nil || len(pending) == 0 {
		return nil
	}
	failed := 0
	timedOut := func() error {
		fmt.Fprintf(g.stdout, "%d migrations still running after %s (see 'podvisor get migrations -A')\n", len(pending), wait)
		return nil
	}
	err := awaitAnswers(ctx, wait, timedOut, func(ev event.Event) (bool, error) {
		v, err := events.Decode(ev.Type(), ev.Data())
		if err != nil {
			return false, nil
		}
		switch p := v.(type) {
		case *events.MigrationCompleted:
			if m, ok := pending[p.ID]; ok {
				delete(pending, p.ID)
				fmt.Fprintf(g.stdout, "moved %s: %s → %s\n", events.PodKey(m.Namespace, m.Pod), p.SourceHost, p.TargetHost)
			}
		case *events.MigrationFailed:
			if m, ok := pending[p.ID]; ok {
				delete(pending, p.ID)
				failed++
				fmt.Fprintf(g.stdout, "%s stays on %s: %s: %s\n", events.PodKey(m.Namespace, m.Pod), m.From, p.Reason, p.Message)
			}
		case *events.MigrationRejected:
			if m, ok := pending[p.ID]; ok {
				delete(pending, p.ID)
				failed++
				fmt.Fprintf(g.stdout, "%s stays on %s: %s: %s\n", events.PodKey(m.Namespace, m.Pod), m.From, p.Reason, p.Message)
			}
		}
		return len(pending) == 0, nil
	}, results)
	if err != nil || len(pending) > 0 {
		return err
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of %d moves did not happen", failed, len(plan))}
	}
	return nil
}
