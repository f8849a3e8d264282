package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// cordon and uncordon publish host.cordoned / host.uncordoned as a client:
// the scheduler stops (or resumes) placing pods on the host; uncordon also
// takes a drained host out of maintenance mode.

func newCordonCmd(g *globals) *cobra.Command {
	return hostToggleCmd(g, "cordon", "Stop placing new pods (and migrations) on a host; its pods stay",
		func(host string) (string, events.Payload) {
			return events.TypeHostCordoned, &events.HostCordoned{Name: host, Reason: "Manual"}
		})
}

func newUncordonCmd(g *globals) *cobra.Command {
	return hostToggleCmd(g, "uncordon", "Make a cordoned or drained host schedulable again and take it out of maintenance mode",
		func(host string) (string, events.Payload) {
			return events.TypeHostUncordoned, &events.HostUncordoned{Name: host}
		})
}

func hostToggleCmd(g *globals, verb, short string, payload func(host string) (string, events.Payload)) *cobra.Command {
	return &cobra.Command{
		Use:               verb + " host NAME",
		Short:             short,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeNamesOf(g, "host"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "host" && args[0] != "hosts" {
				return usageError("%s %s: only hosts can be %sed (podvisor %s host NAME)", verb, args[0], verb, verb)
			}
			ceType, p := payload(args[1])
			if err := p.Validate(); err != nil {
				return usageError("%v", err)
			}
			ctx := cmd.Context()
			b, err := g.connect(ctx)
			if err != nil {
				return err
			}
			defer b.Close()
			if err := hostKnown(ctx, b, args[1]); err != nil {
				return err
			}
			ev, err := bus.NewEvent(CLISource, ceType, args[1], p)
			if err != nil {
				return err
			}
			if err := b.Publish(ctx, ev); err != nil {
				return fmt.Errorf("%s %s: %w", verb, args[1], err)
			}
			fmt.Fprintf(g.stdout, "host %s %sed\n", args[1], verb)
			return nil
		},
	}
}
