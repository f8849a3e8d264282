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
(by default the one the pod's kubectl.kubernetes.io/default-container annotation names, else the pod's
only app container; init containers need -c), -f follows it (across restarts) until Ctrl-C,
--previous reads the previous instance's log after a restart, --tail N starts N lines before the end
(--tail 0 prints none of the log so far; with -f, only the lines written from now on).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if tail > 0 {
				req.TailLines = tail
			}
			// --tail 0: from the end (TailLines 0 is the whole log). The
			// host agent serves it for agents that predate it too.
			req.FromEnd = tail == 0
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			ctx := cmd.Context()
			_, err := g.podQuery(ctx, req.Namespace, req.Name, events.SubjectPodLogs, func(uid string) any {
				req.UID = uid
				return &req
			}, nil, g.stdout)
			if err != nil && ctx.Err() != nil {
				return nil // Ctrl-C ends a follow
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&req.Namespace, "namespace", "n", "default", "namespace of the pod")
	f.StringVarP(&req.Container, "container", "c", "", containerFlagHelp)
	f.BoolVarP(&req.Follow, "follow", "f", false, "keep printing new lines until interrupted")
	f.BoolVarP(&req.Previous, "previous", "p", false, "print the log of the previous instance of the container")
	f.Int64Var(&tail, "tail", -1, "lines from the end to start at (0: none, only new lines with -f; negative, the default: the whole log)")
	return cmd
}

// containerFlagHelp is logs' and exec's -c help.
const containerFlagHelp = "container (default: the one the pod's kubectl.kubernetes.io/default-container annotation names, else its only app container)"
