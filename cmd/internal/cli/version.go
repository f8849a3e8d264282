package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/buildinfo"
)

func newVersionCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the build of this podvisor binary",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			switch output {
			case "":
				fmt.Fprintln(g.stdout, buildinfo.Get())
			case "json":
				b, _ := json.MarshalIndent(buildinfo.Get(), "", "  ")
				fmt.Fprintln(g.stdout, string(b))
			default:
				return usageError("-o %q: want json or nothing", output)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json for machines")
	return cmd
}
