package cli

import (
	"errors"
	"strings"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/cmd/internal/serve"
)

// newServeCmd runs one service in this process: what `podvisord serve`
// does, kept in the CLI for a single executable that does everything.
func newServeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "serve SERVICE",
		Short: "Run one service (what a container runs): " + strings.Join(runner.Names(), ", "),
		Long:  serve.Help,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := serve.Run(cmd.Context(), args[0], serve.Options{StateDir: g.stateDir, NATSURL: g.natsURL})
			if errors.Is(err, serve.ErrSettings) {
				return &exitError{code: 2, err: err}
			}
			return err
		},
	}
}
