package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// followEvents delivers the events published on subjects of stream from now
// on. It listens before the caller publishes, so a fast answer is not
// missed.
func followEvents(ctx context.Context, b *bus.Bus, stream string, subjects ...string) (<-chan event.Event, func(), error) {
	c, err := b.JetStream().OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects,
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, nil, err
	}
	out := make(chan event.Event, 256)
	cc, err := c.Consume(func(m jetstream.Msg) {
		if ev, err := bus.DecodeMessage(m); err == nil {
			select {
			case out <- ev:
			default:
			}
		}
	})
	if err != nil {
		return nil, nil, err
	}
	return out, cc.Stop, nil
}

func newMigrateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate pod|vm NAME [--to HOST] | migrate cancel ID",
		Short: "Move a pod or a native VM to another host (vMotion), or cancel a migration",
		Long: `migrate pod publishes migration.requested. The scheduler reserves room on a target that carries
every network of the pod (--to names one; otherwise it picks), then the migration service checks
the target again, waits for a slot (at most 2 migrations leave a host and 5 touch a cluster at
once), moves the pod VM and reports progress. migrate pod waits up to --wait and prints the
outcome; a refusal or failure prints its reason and exits non-zero.

migrate vm publishes vm.migrate.requested for a native VM (powered on or off). The scheduler
reserves room on a target that carries every network of the VM and mounts the datastores of its
disks (a vMotion moves the VM, not its disks), the move waits for a slot under the same limits,
then the provisioner relocates the VM. migrate vm waits up to --wait for vm.migrated and prints
where the VM went; a refusal, a failure or no outcome within --wait exits non-zero with the reason.

migrate cancel ID cancels a migration, of a pod or a VM, that has not begun relocating (IDs:
podvisor get migrations -o json).`,
	}
	cmd.AddCommand(newMigratePodCmd(g), newMigrateVMCmd(g), newMigrateCancelCmd(g))
	return cmd
}

func newMigratePodCmd(g *globals) *cobra.Command {
	var (
		namespace, to, id string
		wait              time.Duration
	)
	cmd := &cobra.Command{
		Use:               "pod NAME",
		Short:             "Move a running pod to another host",
		ValidArgsFunction: completeName(g, "pods"),
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if id == "" {
				id = uuid.NewString()
			}
			req := &events.MigrationRequested{MigrationRef: events.MigrationRef{ID: id, Namespace: namespace, Pod: args[0]}, TargetHost: to}
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return migratePod(cmd.Context(), b, req, wait, g)
		},
		Annotations: requests(),
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", events.DefaultNamespace, "namespace of the pod")
	cmd.Flags().StringVar(&to, "to", "", "target host (default: the scheduler picks)")
	cmd.Flags().StringVar(&id, "id", "", "migration ID (default: a new UUID)")
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the outcome (0: do not wait)")
	return cmd
}

// migratePod publishes the request and follows the migration to its end.
func migratePod(ctx context.Context, b *bus.Bus, req *events.MigrationRequested, wait time.Duration, g *globals) error {
	key := req.ObjectKey()
	ev, err := bus.NewEvent(CLISource, events.TypeMigrationRequested, key, req)
	if err != nil {
		return err
	}
	podFlow(ctx, b, req.Namespace, req.Pod, &ev)
	var answers <-chan event.Event
	if wait > 0 {
		ch, stop, err := followEvents(ctx, b, events.StreamMigrations, "pv.migration.>")
		if err != nil {
			return err
		}
		defer stop()
		answers = ch
	}
	if err := b.Publish(ctx, ev); err != nil {
		return fmt.Errorf("migration of %s: %w", key, err)
	}
	dest := req.TargetHost
	if dest == "" {
		dest = "a host the scheduler picks"
	}
	fmt.Fprintf(g.stdout, "migration %s requested: %s → %s\n", req.ID, key, dest)
	if wait <= 0 {
		return nil
	}
	start := time.Now()
	lastLine := ""
	say := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if line != lastLine {
			fmt.Fprintln(g.stdout, line)
			lastLine = line
		}
	}
	timedOut := func() error {
		fmt.Fprintf(g.stdout, "no outcome within %s; the migration goes on (see 'podvisor get migration %s -n %s')\n", wait, req.ID, req.Namespace)
		return nil
	}
	return awaitAnswers(ctx, wait, timedOut, func(ev event.Event) (bool, error) {
		v, err := events.Decode(ev.Type(), ev.Data())
		if err != nil {
			return false, nil
		}
		switch p := v.(type) {
		case *events.MigrationTargetReserved:
			if p.ID == req.ID {
				say("target reserved: %s (%s), leaving %s", p.TargetHost, p.TargetCluster, p.SourceHost)
			}
		case *events.MigrationProgress:
			if p.ID != req.ID {
				return false, nil
			}
			switch p.Phase {
			case events.PhaseQueued:
				if p.QueuePosition > 0 || p.Message != "" {
					say("queued: %d ahead%s", p.QueuePosition, suffix(p.Message))
				} else {
					say("queued")
				}
			case events.PhaseRelocating:
				say("relocating %d%%", p.Percent)
			default:
				say("%s", strings.ToLower(p.Phase))
			}
		case *events.MigrationCompleted:
			if p.ID == req.ID {
				fmt.Fprintf(g.stdout, "migrated %s: %s → %s (%s) in %s\n", key, p.SourceHost, p.TargetHost, p.TargetCluster, time.Since(start).Round(time.Millisecond))
				return true, nil
			}
		case *events.MigrationRejected:
			if p.ID == req.ID {
				fmt.Fprintf(g.stdout, "migration of %s refused: %s: %s\n", key, p.Reason, p.Message)
				return true, &exitError{code: 1, err: fmt.Errorf("migration %s refused (%s)", req.ID, p.Reason)}
			}
		case *events.MigrationFailed:
			if p.ID == req.ID {
				fmt.Fprintf(g.stdout, "migration of %s failed: %s: %s\n", key, p.Reason, p.Message)
				return true, &exitError{code: 1, err: fmt.Errorf("migration %s failed (%s)", req.ID, p.Reason)}
			}
		case *events.MigrationCancelled:
			if p.ID == req.ID && ev.Source() != CLISource {
				fmt.Fprintf(g.stdout, "migration of %s cancelled\n", key)
				return true, &exitError{code: 1, err: fmt.Errorf("migration %s cancelled", req.ID)}
			}
		}
		return false, nil
	}, answers)
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return " (" + msg + ")"
}

func newMigrateCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a migration that has not begun relocating",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				kv, err := b.KV(ctx, events.BucketMigrations)
				if err != nil {
					return err
				}
				e, err := kv.Get(ctx, events.MigrationRecordKey(args[0]))
				if args[0] == events.MigrationLeaderKey { // the service's lease, no migration
					err = jetstream.ErrKeyNotFound
				}
				if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
					return &exitError{code: 1, err: fmt.Errorf("migration %q not found (see podvisor get migrations -A)", args[0])}
				}
				if err != nil {
					return err
				}
				var r events.MigrationRecord
				if err := json.Unmarshal(e.Value(), &r); err != nil {
					return fmt.Errorf("migration %s: %w", args[0], err)
				}
				if !r.Active() {
					return &exitError{code: 1, err: fmt.Errorf("migration %s already ended (%s)", r.ID, r.Phase)}
				}
				if r.Started() {
					return &exitError{code: 1, err: fmt.Errorf("migration %s is %s: a relocation that began cannot be cancelled", r.ID, r.Phase)}
				}
				p := &events.MigrationCancelRequested{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}}
				ev, err := bus.NewEvent(CLISource, events.TypeMigrationCancelRequested, p.ObjectKey(), p)
				if err != nil {
					return err
				}
				if err := b.Publish(ctx, ev); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "cancel of migration %s (%s) requested\n", r.ID, r.Key())
				return nil
			})
		},
		Annotations: requests(),
	}
}

// podFlow puts the pod's flow trace context on ev, so that a migration shows
// in the pod's trace (`podvisor trace pod`) as the drain and host-loss paths
// do. A pod without a record or trace context leaves ev as it is.
func podFlow(ctx context.Context, b *bus.Bus, namespace, name string, ev *event.Event) {
	kv, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return
	}
	e, err := kv.Get(ctx, events.PodRecordKey(namespace, name))
	if err != nil {
		return
	}
	var rec events.PodRecord
	if json.Unmarshal(e.Value(), &rec) == nil && rec.TraceParent != "" {
		ev.SetExtension(bus.ExtTraceparent, rec.TraceParent)
	}
}

func newMigrateVMCmd(g *globals) *cobra.Command {
	var (
		namespace, to, id string
		wait              time.Duration
	)
	cmd := &cobra.Command{
		Use:               "vm NAME",
		Short:             "Move a native VM to another host (vMotion)",
		ValidArgsFunction: completeName(g, "vms"),
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if id == "" {
				id = uuid.NewString()
			}
			req := &events.VMMigrateRequested{ID: id, Namespace: namespace, Name: args[0], TargetHost: to}
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				if e, err := b.KV(ctx, events.BucketVMs); err != nil {
					return err
				} else if _, err := e.Get(ctx, events.VMRecordKey(namespace, args[0])); errors.Is(err, jetstream.ErrKeyNotFound) {
					return &exitError{code: 1, err: fmt.Errorf("vm %s/%s not found", namespace, args[0])}
				} else if err != nil {
					return err
				}
				var answers <-chan event.Event
				if wait > 0 {
					ch, stop, err := followEvents(ctx, b, events.StreamVMs, events.SubjectVMMigrated)
					if err != nil {
						return err
					}
					defer stop()
					answers = ch
				}
				ev, err := bus.NewEvent(CLISource, events.TypeVMMigrateRequested, req.ObjectKey(), req)
				if err != nil {
					return err
				}
				if err := b.Publish(ctx, ev); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "vm migration %s requested for %s/%s\n", id, namespace, args[0])
				if wait <= 0 {
					return nil
				}
				timedOut := func() error {
					return &exitError{code: 1, err: fmt.Errorf("vm migration %s: no outcome within %s (see 'podvisor get vm %s -n %s')", id, wait, args[0], namespace)}
				}
				return awaitAnswers(ctx, wait, timedOut, func(ev event.Event) (bool, error) {
					var m events.VMMigrated
					if ev.DataAs(&m) != nil || m.ID != id {
						return false, nil
					}
					if m.Failed() {
						return true, &exitError{code: 1, err: fmt.Errorf("vm migration %s failed: %s: %s", id, m.Reason, m.Message)}
					}
					fmt.Fprintf(g.stdout, "vm %s/%s moved from %s to %s\n", namespace, args[0], m.SourceHost, m.TargetHost)
					return true, nil
				}, answers)
			})
		},
		Annotations: requests(),
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of the VM")
	cmd.Flags().StringVar(&to, "to", "", "target host (default: the scheduler picks)")
	cmd.Flags().StringVar(&id, "id", "", "migration ID (default: a new UUID)")
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the outcome (0: do not wait)")
	return cmd
}
