// Command podvisord runs one podvisor service: `podvisord serve SERVICE`,
// what every service container runs and what `podvisor up --replicas`
// starts per service. It is `podvisor serve` without the rest of the CLI:
// no simulator, no NATS or Redis server, no bench. A service process then
// maps and initialises a smaller executable, which is most of its resident
// memory at rest (docs/bench.md, "Memory of the control plane alone").
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/buildinfo"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/cmd/internal/serve"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// errUsage marks a bad invocation (exit status 2, as for bad settings).
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string) int {
	var o serve.Options
	root := &cobra.Command{
		Use:           "podvisord",
		Short:         "Run one podvisor service",
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&o.StateDir, "state-dir", serve.DefaultStateDir(), "state directory of a local podvisor up (its env file supplies unset settings)")
	root.PersistentFlags().StringVar(&o.NATSURL, "nats-url", "", "NATS server URL (default $PODVISOR_NATS_URL, else the env file of the state dir)")
	root.AddCommand(&cobra.Command{
		Use:   "serve SERVICE",
		Short: "Run one service: " + strings.Join(runner.Names(), ", "),
		Long:  serve.Help,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return fmt.Errorf("%w: %v", errUsage, err)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return serve.Run(cmd.Context(), args[0], o)
		},
	}, &cobra.Command{
		Use:   "version",
		Short: "Print the build of this binary",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), buildinfo.Get()) },
	})
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return fmt.Errorf("%w: %v", errUsage, err) })
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	// cobra reports an unknown command in its own words, with no type.
	if errors.Is(err, serve.ErrSettings) || errors.Is(err, errUsage) || strings.HasPrefix(err.Error(), "unknown command") {
		return 2
	}
	return 1
}
