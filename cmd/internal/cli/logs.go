package cli

import (
	"bytes"
	"io"

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
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			ctx := cmd.Context()
			query := func(r events.PodLogsRequest, out io.Writer) error {
				_, err := g.podQuery(ctx, r.Namespace, r.Name, events.SubjectPodLogs, func(uid string) any {
					r.UID = uid
					return &r
				}, nil, out)
				return err
			}
			var err error
			if tail == 0 {
				err = logsFromNow(req, query, g.stdout)
			} else {
				err = query(req, g.stdout)
			}
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

// logsFromNow is `logs --tail 0`: none of the log written so far, and with
// req.Follow the lines written from now on. The logs request has no "zero
// lines" (TailLines 0 is the whole log), so it reads the last line first
// (which also checks the pod and container) and then, when following,
// follows from the last line, leaving that line out. A line written between
// the two requests may be lost.
func logsFromNow(req events.PodLogsRequest, query func(events.PodLogsRequest, io.Writer) error, out io.Writer) error {
	req.TailLines = 1
	follow := req.Follow
	req.Follow = false
	var last bytes.Buffer
	if err := query(req, &last); err != nil || !follow {
		return err
	}
	req.Follow = true
	return query(req, &skipPrefix{w: out, prefix: last.Bytes()})
}

// skipPrefix writes to w what is written to it, except prefix when the
// stream starts with it.
type skipPrefix struct {
	w      io.Writer
	prefix []byte // what is still to be matched
	held   int    // bytes of the prefix matched so far
	done   bool
}

func (s *skipPrefix) Write(p []byte) (int, error) {
	n := len(p)
	if !s.done {
		m := min(len(p), len(s.prefix)-s.held)
		if bytes.Equal(p[:m], s.prefix[s.held:s.held+m]) {
			s.held += m
			p = p[m:]
			s.done = s.held == len(s.prefix)
			if !s.done {
				return n, nil
			}
		} else {
			// not the prefix after all: what was held back is output
			s.done = true
			if _, err := s.w.Write(s.prefix[:s.held]); err != nil {
				return 0, err
			}
		}
	}
	if len(p) == 0 {
		return n, nil
	}
	if _, err := s.w.Write(p); err != nil {
		return 0, err
	}
	return n, nil
}
