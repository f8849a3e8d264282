package cli

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
)

func newLogsCmd(g *globals) *cobra.Command {
	var (
		req       events.PodLogsRequest
		tail      int64
		since     time.Duration
		sinceTime string
	)
	cmd := &cobra.Command{
		Use:   "logs POD",
		Short: "Print a container's log (as its pod VM agent keeps it)",
		Long: `logs asks the host agent of the pod's host for a container's log: -c names the container
(by default the one the pod's kubectl.kubernetes.io/default-container annotation names, else the pod's
only app container; init containers need -c), -f follows it (across restarts) until Ctrl-C,
--previous reads the previous instance's log after a restart, --tail N starts N lines before the end
(--tail 0 prints none of the log so far; with -f, only the lines written from now on).
--timestamps prints each line after the time it was written, --since 10m or --since-time RFC3339
leaves out the lines written before (a line's time is the pod VM's clock), --limit-bytes N stops after
N bytes of output, as kubectl logs does (0 for either: the whole log).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if tail < -1 { // kubectl's rule: -1 is the whole log
				return usageError("--tail: %d, want -1 (the whole log), 0 or more", tail)
			}
			if tail > 0 {
				req.TailLines = tail
			}
			// --tail 0: from the end (TailLines 0 is the whole log). The
			// host agent serves it for agents that predate it too.
			req.FromEnd = tail == 0
			if err := logsSince(cmd, &req, since, sinceTime); err != nil {
				return err
			}
			if req.LimitBytes < 0 { // 0, as in kubectl: no limit
				return usageError("--limit-bytes: %d, want 0 (no limit) or more", req.LimitBytes)
			}
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
	f.Int64Var(&tail, "tail", -1, "lines from the end to start at (0: none, only new lines with -f; -1, the default: the whole log)")
	f.BoolVar(&req.Timestamps, "timestamps", false, "print each line after the time it was written (RFC3339, to the nanosecond)")
	f.DurationVar(&since, "since", 0, "only lines written in this long before now, like 5s, 2m or 3h (not with --since-time)")
	f.StringVar(&sinceTime, "since-time", "", "only lines written at or after this RFC3339 time (not with --since)")
	f.Int64Var(&req.LimitBytes, "limit-bytes", 0, "stop after this many bytes of output (default: no limit)")
	return cmd
}

// logsSince sets req's SinceTime from --since or --since-time, which
// kubectl takes one of.
func logsSince(cmd *cobra.Command, req *events.PodLogsRequest, since time.Duration, sinceTime string) error {
	f := cmd.Flags()
	switch {
	case f.Changed("since") && f.Changed("since-time"):
		return usageError("--since and --since-time: give at most one")
	case since < 0:
		return usageError("--since: %s, want a duration of 0 (the whole log) or more", since)
	case since > 0: // 0, as in kubectl: the whole log
		t := time.Now().Add(-since)
		req.SinceTime = &t
	case f.Changed("since-time"):
		t, err := time.Parse(time.RFC3339Nano, sinceTime)
		if err != nil {
			return usageError("--since-time: %q is not an RFC3339 time (like 2024-05-01T10:00:00Z)", sinceTime)
		}
		req.SinceTime = &t
	}
	return nil
}

// containerFlagHelp is logs' and exec's -c help.
const containerFlagHelp = "container (default: the one the pod's kubectl.kubernetes.io/default-container annotation names, else its only app container)"
