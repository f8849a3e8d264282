package cli

import (
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
)

func newLogsCmd(g *globals) *cobra.Command {
	var (
		req  events.PodLogsRequest
		tail int64
	)
	cmd := &cobra.Command{
		Use:   "logs POD",
		Short: "Print a container's log (as its pod VM agent keeps it)",
		Long: `logs asks the host agent of the pod's host for a container's log: -c names the container
(needed when the pod has several), -f follows it (across restarts) until Ctrl-C, --previous reads the
previous instance's log after a restart, --tail N starts N lines before the end.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			switch {
			case tail > 0:
				req.TailLines = tail
			case tail != -1:
				return usageError("--tail %d: want a positive number of lines, or -1 for the whole log", tail)
			}
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			ctx := cmd.Context()
			_, err := g.podQuery(ctx, req.Namespace, req.Name, events.SubjectPodLogs, func(uid string) any {
				req.UID = uid
				return &req
			}, nil)
			if err != nil && ctx.Err() != nil {
				return nil // Ctrl-C ends a follow
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&req.Namespace, "namespace", "n", "default", "namespace of the pod")
	f.StringVarP(&req.Container, "container", "c", "", "container (default: the pod's only one)")
	f.BoolVarP(&req.Follow, "follow", "f", false, "keep printing new lines until interrupted")
	f.BoolVarP(&req.Previous, "previous", "p", false, "print the log of the previous instance of the container")
	f.Int64Var(&tail, "tail", -1, "lines from the end to start at (-1: the whole log)")
	return cmd
}
