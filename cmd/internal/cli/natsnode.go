package cli

import (
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
)

// newNATSNodeCmd is one node of `podvisor up --nats-nodes N`'s cluster;
// up runs it (hidden: nobody else needs to).
func newNATSNodeCmd(g *globals) *cobra.Command {
	var (
		node                      allinone.NATSNode
		clientPorts, clusterPorts string
	)
	cmd := &cobra.Command{
		Use:    "nats-node",
		Short:  "Run one node of the NATS cluster of 'podvisor up --nats-nodes' (up starts it)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if node.ClientPorts, err = ports(clientPorts); err != nil {
				return usageError("--client-ports: %v", err)
			}
			if node.ClusterPorts, err = ports(clusterPorts); err != nil {
				return usageError("--cluster-ports: %v", err)
			}
			return allinone.RunNATSNode(cmd.Context(), g.stateDir, node)
		},
	}
	f := cmd.Flags()
	f.IntVar(&node.Index, "index", 0, "this node's index")
	f.StringVar(&node.Host, "listen", "127.0.0.1", "address to listen on")
	f.StringVar(&clientPorts, "client-ports", "", "every node's client port, comma-separated, in index order")
	f.StringVar(&clusterPorts, "cluster-ports", "", "every node's cluster port, comma-separated, in index order")
	return cmd
}

func ports(list string) ([]int, error) {
	var out []int
	for p := range strings.SplitSeq(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n <= 0 || n > 65535 {
			return nil, usageError("%q is not a port", p)
		}
		out = append(out, n)
	}
	return out, nil
}
