package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
)

func newExecCmd(g *globals) *cobra.Command {
	var (
		req         events.PodExecRequest
		interactive bool
		tty         bool
	)
	cmd := &cobra.Command{
		Use:   "exec POD [-c CONTAINER] [-i] [-t] -- COMMAND [ARGS...]",
		Short: "Run a command in a running container; its exit code is podvisor's",
		Long: `exec runs COMMAND in a running container of the pod, through the host agent of the pod's
host and the pod VM agent, and prints its output. -c names the container: by default the one the pod's
kubectl.kubernetes.io/default-container annotation names, else the pod's only app container. -i streams
this process's stdin to the command, at the pace the command reads it (any amount: what is sent ahead of
the command is bounded, a command that does not read holds podvisor until it exits or Ctrl-C; input left
when the command exits is dropped). There is no terminal: -t (kubectl's exec -it habit) runs the command
without one and says so, as kubectl does when its input is not a terminal. The command's exit code
becomes podvisor's.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return usageError("usage: podvisor exec POD [-c CONTAINER] [-i] [-t] -- COMMAND [ARGS...] (one pod name, then -- before the command)")
			}
			req.Name, req.Command = args[0], args[1:]
			if tty {
				fmt.Fprintln(g.stderr, "Unable to use a TTY: a pod VM's container gets none from podvisor exec; running without one")
			}
			req.Stdin = interactive
			if err := req.Validate(); err != nil {
				return usageError("%v", err)
			}
			var stdin io.Reader
			if interactive {
				stdin = g.stdin
			}
			code, err := g.podQuery(cmd.Context(), req.Namespace, req.Name, events.SubjectPodExec, func(uid string) any {
				req.UID = uid
				return &req
			}, stdin, g.stdout)
			if err != nil {
				return err
			}
			if code == nil {
				return fmt.Errorf("the host agent ended the exec without an exit code")
			}
			if *code != 0 {
				return &exitError{code: int(*code), err: fmt.Errorf("command exited with code %d", *code)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&req.Namespace, "namespace", "n", "default", "namespace of the pod")
	f.StringVarP(&req.Container, "container", "c", "", containerFlagHelp)
	f.BoolVarP(&interactive, "stdin", "i", false, "send stdin to the command")
	f.BoolVarP(&tty, "tty", "t", false, "accepted for kubectl's exec -it: there is no terminal, the command runs without one")
	return cmd
}
