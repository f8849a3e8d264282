package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// hostKnown checks a host name against the scheduler's inventory, so that a
// typo is an error here rather than a dead letter in the service. With no
// inventory at all (no scheduler has run), it lets the request through.
func hostKnown(ctx context.Context, b *bus.Bus, host string) error {
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		return nil
	}
	if _, err := kv.Get(ctx, events.HostRecordKey(host)); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil
	}
	n := 0
	for range lister.Keys() {
		n++
	}
	if n == 0 {
		return nil
	}
	return &exitError{code: 1, err: fmt.Errorf("host %q not found (see podvisor get hosts)", host)}
}

func newDrainCmd(g *globals) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:               "drain host NAME",
		ValidArgsFunction: completeNamesOf(g, "host"),
		Short:             "Empty a host: cordon it, move its pods and native VMs away, enter maintenance mode",
		Long: `drain publishes host.drain.requested. The migration service cordons the host (no new pods or VMs
land there), migrates each of its pods to a host the scheduler picks, then moves each of its native
VMs (vMotion, powered on or off, to a host that mounts the VM's disks), all within the migration
limits. A VM that cannot move (no target, or vCenter refuses the relocation) is evicted and made
again on another host from its disks. Once every pod and VM has left, the host enters maintenance
mode.

drain waits up to --wait and prints each pod it moved and the outcome (how many pods and VMs
moved); pods and VMs that could not leave (a VM still there 2 minutes after its move was asked)
are listed with their reasons, the host stays out of maintenance mode and drain exits non-zero.
'podvisor uncordon host NAME' reverses the cordon.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "host" && args[0] != "hosts" {
				return usageError("drain %s: only hosts can be drained (podvisor drain host NAME)", args[0])
			}
			p := &events.HostDrainRequested{Name: args[1]}
			if err := p.Validate(); err != nil {
				return usageError("%v", err)
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				if err := hostKnown(ctx, b, p.Name); err != nil {
					return err
				}
				return drainHost(ctx, b, p, wait, g)
			})
		},
		Annotations: requests(),
	}
	cmd.Flags().DurationVar(&wait, "wait", 10*time.Minute, "how long to wait for the drain to finish (0: do not wait)")
	return cmd
}

func drainHost(ctx context.Context, b *bus.Bus, p *events.HostDrainRequested, wait time.Duration, g *globals) error {
	ev, err := bus.NewEvent(CLISource, events.TypeHostDrainRequested, p.Name, p)
	if err != nil {
		return err
	}
	var hosts, migs <-chan event.Event
	if wait > 0 {
		ch, stop, err := followEvents(ctx, b, events.StreamHosts, events.SubjectHostCordoned, events.SubjectHostDrained, events.SubjectHostUncordoned)
		if err != nil {
			return err
		}
		defer stop()
		hosts = ch
		mch, mstop, err := followEvents(ctx, b, events.StreamMigrations, events.SubjectMigrationCompleted, events.SubjectMigrationFailed, events.SubjectMigrationRejected)
		if err != nil {
			return err
		}
		defer mstop()
		migs = mch
	}
	if err := b.Publish(ctx, ev); err != nil {
		return fmt.Errorf("drain %s: %w", p.Name, err)
	}
	fmt.Fprintf(g.stdout, "drain of host %s requested\n", p.Name)
	if wait <= 0 {
		return nil
	}
	// On a terminal, a bar counts the pods that left (of those the
	// inventory counted on the host when the drain began).
	bars := newProgressBars(g.stderr)
	defer bars.done()
	moved := bars.bar("pods moved off "+p.Name, hostPods(ctx, b, p.Name))
	timedOut := func() error {
		fmt.Fprintf(g.stdout, "the drain did not finish within %s; it goes on (see 'podvisor get migrations -A')\n", wait)
		return nil
	}
	return awaitAnswers(ctx, wait, timedOut, func(ev event.Event) (bool, error) {
		switch ev.Type() {
		case events.TypeMigrationCompleted, events.TypeMigrationFailed, events.TypeMigrationRejected:
			if ev.Type() == events.TypeMigrationCompleted {
				moved(1)
			}
			printDrainMigration(g, p.Name, ev)
			return false, nil
		}
		v, err := events.Decode(ev.Type(), ev.Data())
		if err != nil {
			return false, nil
		}
		switch h := v.(type) {
		case *events.HostCordoned:
			if h.Name == p.Name {
				fmt.Fprintf(g.stdout, "host %s cordoned\n", h.Name)
			}
		case *events.HostUncordoned:
			if h.Name == p.Name {
				fmt.Fprintf(g.stdout, "host %s was uncordoned: the drain stopped\n", h.Name)
				return true, &exitError{code: 1, err: fmt.Errorf("drain of %s stopped by an uncordon", h.Name)}
			}
		case *events.HostDrained:
			if h.Name != p.Name {
				return false, nil
			}
			// The migrations' outcomes come from another stream: let
			// those already published arrive before the summary.
			flush := time.After(250 * time.Millisecond)
		drainLoop:
			for {
				select {
				case ev := <-migs:
					printDrainMigration(g, p.Name, ev)
				case <-flush:
					break drainLoop
				}
			}
			if len(h.Unmovable) == 0 {
				hostSettled(ctx, b, h.Name, func(r *events.HostRecord) bool { return r.Maintenance })
				fmt.Fprintf(g.stdout, "host %s drained: %s moved; the host is in maintenance mode\n", h.Name, events.MovedText(h.Migrated, h.MigratedVMs))
				return true, nil
			}
			fmt.Fprintf(g.stdout, "host %s not drained: %s moved, %d could not:\n", h.Name, events.MovedText(h.Migrated, h.MigratedVMs), len(h.Unmovable))
			for _, u := range h.Unmovable {
				fmt.Fprintf(g.stdout, "  %s: %s%s\n", events.PodKey(u.Namespace, u.Name), u.Reason, suffix(u.Message))
			}
			fmt.Fprintf(g.stdout, "the host stays cordoned and out of maintenance mode ('podvisor uncordon host %s' reverses the cordon)\n", h.Name)
			return true, &exitError{code: 1, err: fmt.Errorf("%d pods or VMs could not leave %s", len(h.Unmovable), h.Name)}
		}
		return false, nil
	}, migs, hosts)
}

// hostPods is the inventory's pod count of a host, 0 when unknown.
func hostPods(ctx context.Context, b *bus.Bus, host string) int {
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		return 0
	}
	e, err := kv.Get(ctx, events.HostRecordKey(host))
	if err != nil {
		return 0
	}
	var rec events.HostRecord
	if json.Unmarshal(e.Value(), &rec) != nil {
		return 0
	}
	return rec.Pods
}

// printDrainMigration prints the outcome of one migration off the drained
// host.
func printDrainMigration(g *globals, host string, ev event.Event) {
	v, err := events.Decode(ev.Type(), ev.Data())
	if err != nil {
		return
	}
	switch m := v.(type) {
	case *events.MigrationCompleted:
		if m.SourceHost == host {
			fmt.Fprintf(g.stdout, "  moved %s to %s\n", events.PodKey(m.Namespace, m.Pod), m.TargetHost)
		}
	case *events.MigrationFailed:
		if m.SourceHost == host {
			fmt.Fprintf(g.stdout, "  %s stays: %s: %s\n", events.PodKey(m.Namespace, m.Pod), m.Reason, m.Message)
		}
	}
}
