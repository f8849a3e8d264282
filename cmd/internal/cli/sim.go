package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/shared/bus"
)

// simRequestTimeout bounds a simulator-control request.
const simRequestTimeout = 10 * time.Second

func newSimCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim host fail|recover|maintenance NAME",
		Short: "Act on the simulated datacenter of a running `podvisor up` (host failure, recovery, maintenance)",
		Long: `sim changes the simulated vCenter held by 'podvisor up' the way hardware would change a real one:

  podvisor sim host fail esx-1-02          the host stops responding: its pods restart on other hosts,
                                           its native VMs are made again elsewhere from their disks
  podvisor sim host recover esx-1-02       the host answers again
  podvisor sim host maintenance esx-1-02   the host enters maintenance mode (--off leaves it): no new
                                           pods or VMs are placed there; those on it stay (a drain
                                           moves them: podvisor drain host NAME)

The services learn of it as they would from a real vCenter, through the inventory watch.`,
	}
	var off bool
	host := &cobra.Command{
		Use:   "host fail|recover|maintenance NAME",
		Short: "Fail, recover or put a simulated host in maintenance mode",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var subject string
			req := allinone.SimHostRequest{Host: args[1]}
			switch args[0] {
			case "fail":
				subject = allinone.SubjectSimHostFail
			case "recover":
				subject = allinone.SubjectSimHostRecover
			case "maintenance":
				subject, req.Maintenance = allinone.SubjectSimHostMaintenance, !off
			default:
				return usageError("sim host %s: want fail, recover or maintenance", args[0])
			}
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			reply, err := simRequest(cmd.Context(), b, subject, req)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "host %s is %s\n", reply.Host, reply.State)
			return nil
		},
	}
	host.Flags().BoolVar(&off, "off", false, "with maintenance: leave maintenance mode")
	cmd.AddCommand(host)
	return cmd
}

func simRequest(ctx context.Context, b *bus.Bus, subject string, req allinone.SimHostRequest) (*allinone.SimHostReply, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, simRequestTimeout)
	defer cancel()
	out, err := b.Request(rctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, &exitError{code: 1, err: errors.New("no simulator answered: sim commands need a running `podvisor up` with its embedded vCenter simulator")}
	case errors.Is(err, bus.ErrRemote):
		msg := err.Error()
		if i := strings.Index(msg, bus.ErrRemote.Error()+": "); i >= 0 {
			msg = msg[i+len(bus.ErrRemote.Error())+2:]
		}
		return nil, &exitError{code: 1, err: fmt.Errorf("simulator: %s", msg)}
	case err != nil:
		return nil, err
	}
	var reply allinone.SimHostReply
	if err := json.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("simulator answer: %w", err)
	}
	return &reply, nil
}
