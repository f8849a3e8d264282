package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"

	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// CLIConfig is ~/.podvisor/config: named contexts, each a podvisor
// installation and the identity to reach it as, like kubectl's kubeconfig.
//
//	current-context: lab
//	contexts:
//	  lab: {natsURL: tls://nats.lab:4222, natsCreds: ~/lab/client.creds, natsCA: ~/lab/ca.pem}
type CLIConfig struct {
	CurrentContext string             `json:"current-context,omitempty"`
	Contexts       map[string]Context `json:"contexts,omitempty"`
}

// Context says where NATS is and with which creds and CA to reach it.
type Context struct {
	NATSURL   string `json:"natsURL"`
	NATSCreds string `json:"natsCreds,omitempty"`
	NATSCA    string `json:"natsCA,omitempty"`
}

// configPath is $PODVISOR_CONFIG, else ~/.podvisor/config.
func configPath() string {
	if p := os.Getenv("PODVISOR_CONFIG"); p != "" {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".podvisor", "config")
	}
	return filepath.Join(home, ".podvisor", "config")
}

// loadCLIConfig reads the config file; a missing file is an empty config.
func loadCLIConfig() (*CLIConfig, error) {
	path := configPath()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &CLIConfig{}, nil
	}
	if err != nil {
		return nil, err
	}
	var c CLIConfig
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

func (c *CLIConfig) save() error {
	path := configPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// current returns the current context, if one is set.
func (c *CLIConfig) current() (Context, bool, error) {
	if c.CurrentContext == "" {
		return Context{}, false, nil
	}
	ctx, ok := c.Contexts[c.CurrentContext]
	if !ok {
		return Context{}, false, fmt.Errorf("%s: current-context %q is not among the contexts", configPath(), c.CurrentContext)
	}
	return ctx, true, nil
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Manage CLI contexts (" + "~/.podvisor/config" + ")"}
	var set Context
	setCmd := &cobra.Command{
		Use:   "set-context NAME",
		Short: "Create or replace a context (--nats-url, --nats-creds, --nats-ca); --from-env takes the env file of the state dir",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fromEnv, _ := cmd.Flags().GetBool("from-env")
			if fromEnv {
				vars, err := serve.ReadEnvFile(filepath.Join(g.stateDir, "env"))
				if err != nil {
					return fmt.Errorf("--from-env: %w", err)
				}
				set = Context{NATSURL: vars["PODVISOR_NATS_URL"], NATSCreds: vars["PODVISOR_NATS_CREDS"], NATSCA: vars["PODVISOR_NATS_CA"]}
			} else {
				set.NATSURL = g.natsURL
			}
			if set.NATSURL == "" {
				return usageError("set-context %s: --nats-url (or --from-env) is required", args[0])
			}
			for _, f := range []struct{ flag, path string }{{"--nats-creds", set.NATSCreds}, {"--nats-ca", set.NATSCA}} {
				if f.path == "" {
					continue
				}
				if _, err := os.Stat(f.path); err != nil {
					return usageError("set-context %s: %s: %v", args[0], f.flag, err)
				}
			}
			c, err := loadCLIConfig()
			if err != nil {
				return err
			}
			if c.Contexts == nil {
				c.Contexts = map[string]Context{}
			}
			c.Contexts[args[0]] = set
			if c.CurrentContext == "" {
				c.CurrentContext = args[0]
			}
			if err := c.save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "context %s set\n", args[0])
			return nil
		},
	}
	setCmd.Flags().StringVar(&set.NATSCreds, "nats-creds", "", "creds file of the identity to use")
	setCmd.Flags().StringVar(&set.NATSCA, "nats-ca", "", "CA file that signs the NATS server's certificate")
	setCmd.Flags().Bool("from-env", false, "take URL, creds and CA from the env file `podvisor up` wrote in the state dir")
	useCmd := &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the context commands use (when no --nats-url or $PODVISOR_NATS_URL says otherwise)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadCLIConfig()
			if err != nil {
				return err
			}
			if _, ok := c.Contexts[args[0]]; !ok {
				return &exitError{code: 1, err: fmt.Errorf("no context %q in %s (podvisor config set-context %s ...)", args[0], configPath(), args[0])}
			}
			c.CurrentContext = args[0]
			if err := c.save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "switched to context %s\n", args[0])
			return nil
		},
	}
	getCmd := &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts; * marks the current one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := loadCLIConfig()
			if err != nil {
				return err
			}
			names := make([]string, 0, len(c.Contexts))
			for n := range c.Contexts {
				names = append(names, n)
			}
			sort.Strings(names)
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "CURRENT\tNAME\tNATS\tCREDS\tCA")
			for _, n := range names {
				mark := ""
				if n == c.CurrentContext {
					mark = "*"
				}
				x := c.Contexts[n]
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", mark, n, redactURL(x.NATSURL), x.NATSCreds, x.NATSCA)
			}
			return w.Flush()
		},
	}
	cmd.AddCommand(setCmd, useCmd, getCmd)
	return cmd
}
