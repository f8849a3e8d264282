package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// cordon and uncordon ask the migration service (host.cordon.requested,
// host.uncordon.requested), which owns cordons with drains and announces
// host.cordoned / host.uncordoned; the scheduler stops (or resumes) placing
// pods on the host from those. uncordon also takes a drained host out of
// maintenance mode. The command waits for the announcement.

// cordonWait bounds the wait for migration's announcement.
const cordonWait = 15 * time.Second

func newCordonCmd(g *globals) *cobra.Command {
	return hostToggleCmd(g, "cordon", "Stop placing new pods (and migrations) on a host; its pods stay",
		func(host string) (string, events.Payload, string) {
			return events.TypeHostCordonRequested, &events.HostCordonRequested{Name: host, Reason: "Manual"}, events.SubjectHostCordoned
		}, func(r *events.HostRecord) bool { return r.Cordoned || r.Maintenance })
}

func newUncordonCmd(g *globals) *cobra.Command {
	return hostToggleCmd(g, "uncordon", "Make a cordoned or drained host schedulable again and take it out of maintenance mode",
		func(host string) (string, events.Payload, string) {
			return events.TypeHostUncordonRequested, &events.HostUncordonRequested{Name: host}, events.SubjectHostUncordoned
		}, func(r *events.HostRecord) bool { return !r.Cordoned && !r.Maintenance })
}

// hostSettleWait bounds the wait for the inventory to show what a command
// reported of a host.
const hostSettleWait = 10 * time.Second

// hostSettled waits until the inventory's record of host satisfies ok:
// the scheduler writes it from the same announcement the command reported,
// or from vCenter, a moment later, and until it does `get hosts` would
// contradict what was just printed. A host without a record, or one that
// does not settle within hostSettleWait, is not waited for further (the
// report stands; the inventory catches up).
func hostSettled(ctx context.Context, b *bus.Bus, host string, ok func(*events.HostRecord) bool) {
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		return
	}
	deadline := time.Now().Add(hostSettleWait)
	for {
		e, err := kv.Get(ctx, events.HostRecordKey(host))
		if err != nil {
			return // no record (or none readable): nothing to agree with
		}
		var rec events.HostRecord
		if json.Unmarshal(e.Value(), &rec) != nil || ok(&rec) || time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func hostToggleCmd(g *globals, verb, short string, payload func(host string) (ceType string, p events.Payload, answer string), settled func(*events.HostRecord) bool) *cobra.Command {
	return &cobra.Command{
		Use:               verb + " host NAME",
		Short:             short,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeNamesOf(g, "host"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "host" && args[0] != "hosts" {
				return usageError("%s %s: only hosts can be %sed (podvisor %s host NAME)", verb, args[0], verb, verb)
			}
			ceType, p, answer := payload(args[1])
			if err := p.Validate(); err != nil {
				return usageError("%v", err)
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				if err := hostKnown(ctx, b, args[1]); err != nil {
					return err
				}
				answers, stop, err := followEvents(ctx, b, events.StreamHosts, answer)
				if err != nil {
					return err
				}
				defer stop()
				ev, err := bus.NewEvent(CLISource, ceType, args[1], p)
				if err != nil {
					return err
				}
				if err := b.Publish(ctx, ev); err != nil {
					return fmt.Errorf("%s %s: %w", verb, args[1], err)
				}
				timeout := time.After(cordonWait)
				for {
					select {
					case a := <-answers:
						if a.Subject() != args[1] {
							continue
						}
						hostSettled(ctx, b, args[1], settled)
						fmt.Fprintf(g.stdout, "host %s %sed\n", args[1], verb)
						return nil
					case <-timeout:
						return fmt.Errorf("%s %s: requested, but no answer from the migration service within %s (is it running?)", verb, args[1], cordonWait)
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			})
		},
		Annotations: requests(),
	}
}
