package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/podvisor/podvisor/cmd/internal/buildinfo"
	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/spf13/cobra"
)

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// exitInterrupted is the exit code of a command interrupted by a signal
// (128 + SIGINT, as a shell reports it).
const exitInterrupted = 130

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRoot(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// Interrupted (Ctrl-C, SIGTERM): what was under way was cancelled
		// (an exec's command is stopped, a wait given up), which is no
		// error of its own; the exit code is the shell's for SIGINT.
		fmt.Fprintln(stderr, "interrupted")
		return exitInterrupted
	}
	// An error of several (errors.Join: get of names not found) says each
	// on its own line.
	errs := []error{err}
	var ee *exitError
	if errors.As(err, &ee) && ee == err {
		if many, ok := ee.err.(interface{ Unwrap() []error }); ok {
			errs = many.Unwrap()
		}
	}
	for _, e := range errs {
		fmt.Fprintln(stderr, "error:", e)
	}
	if ee != nil {
		return ee.code
	}
	// cobra reports an unknown command in its own words, with no type; it
	// is a bad invocation like any other (podvisord does the same).
	if strings.HasPrefix(err.Error(), "unknown command ") {
		return 2
	}
	return 1
}

// globals are the flags every verb shares.
type globals struct {
	natsURL string
	// natsCreds overrides the creds file of whichever source natsConn
	// picks (`--nats-creds admin.creds` for what a client may not do).
	natsCreds string
	stateDir  string
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
}

// NewRoot builds the command tree.
func NewRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "podvisor",
		Short:         "Run Kubernetes-style pods as pod VMs on vSphere",
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.natsURL, "nats-url", "", "NATS server URL (default $PODVISOR_NATS_URL, else the env file of the state dir)")
	root.PersistentFlags().StringVar(&g.natsCreds, "nats-creds", "", "creds file of the NATS identity to act as (default: that of $PODVISOR_NATS_CREDS, the context or the env file)")
	root.PersistentFlags().StringVar(&g.stateDir, "state-dir", defaultStateDir(), "state directory of podvisor up (holds the env file)")
	root.AddCommand(
		newUpCmd(g),
		newServeCmd(g),
		newNATSNodeCmd(g),
		newApplyCmd(g),
		newGetCmd(g),
		newDeleteCmd(g),
		newEventsCmd(g),
		newMigrateCmd(g),
		newCheckCmd(g),
		newDrainCmd(g),
		newCordonCmd(g),
		newUncordonCmd(g),
		newDescribeCmd(g),
		newVersionCmd(g),
		newTraceCmd(g),
		newBenchCmd(g),
		newSimCmd(g),
		newRebalanceCmd(g),
		newInstallCmd(g),
		newLogsCmd(g),
		newExecCmd(g),
		newConfigCmd(g),
		newIdentityCmd(g),
		newTopologyCmd(g),
		newNetworkCmd(g),
	)
	usageArgs(root)
	traceRequests(root, stderr)
	return root
}

// usageArgs makes a wrong number or kind of arguments a usage error (exit
// 2) on every command, as flag errors are: cobra reports them as plain
// errors.
func usageArgs(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return usageError("%v", err)
			}
			return nil
		}
	}
	for _, sub := range cmd.Commands() {
		usageArgs(sub)
	}
}

func defaultStateDir() string { return serve.DefaultStateDir() }

// endpoint resolves a setting: the flag, else the environment variable, else
// the env file written by `podvisor up` in the state dir.
func (g *globals) endpoint(flagValue, envVar string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if v := os.Getenv(envVar); v != "" {
		return v, nil
	}
	file := filepath.Join(g.stateDir, "env")
	vars, err := serve.ReadEnvFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%s is not set and %s does not exist: start `podvisor up` or pass the URL", envVar, file)
		}
		return "", err
	}
	if v := vars[envVar]; v != "" {
		return v, nil
	}
	return "", fmt.Errorf("%s is not set and %s does not define it", envVar, file)
}

// usageError is a bad invocation: exit code 2, like most CLIs.
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}
