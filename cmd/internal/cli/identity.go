package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/redisserver"
)

// newIdentityCmd mints NATS identities from an authority directory: the
// one `podvisor up` keeps in its state dir, or one made for a cluster.
func newIdentityCmd(g *globals) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Mint NATS identities (creds files) and the NATS server's trust configuration",
	}
	authority := func() (*bus.Authority, error) {
		if dir == "" {
			dir = filepath.Join(g.stateDir, "nats-auth")
		}
		return bus.LoadAuthority(dir)
	}
	var (
		role  string
		force bool
	)
	mint := &cobra.Command{
		Use:   "mint NAME",
		Short: "Write NAME.creds with the permissions of --as (client, admin or a service name); prints its path",
		Long: `mint writes NAME.creds in the authority directory, an identity with the permissions of --as
(client by default, admin or a service name), and prints its path. It refuses to rewrite an existing
NAME.creds (admin.creds, a service's) unless --force is given: the file would then carry the
permissions of --as, so "mint admin" without "--as admin" would lock the admin out.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := authority()
			if err != nil {
				return err
			}
			if _, err := bus.LookupIdentity(role); err != nil {
				return usageError("--as %q: want client, admin or a service (%s)", role, identityNames())
			}
			if path := a.CredsPath(args[0]); !force {
				if _, err := os.Stat(path); err == nil {
					return fmt.Errorf("%s exists: pass --force to replace it with a new %s identity, or mint another NAME", path, role)
				}
			}
			path, err := a.MintAs(args[0], role)
			if err != nil {
				return usageError("%v", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), path)
			return nil
		},
	}
	mint.Flags().StringVar(&role, "as", bus.IdentityClient, "whose permissions the identity gets")
	mint.Flags().BoolVar(&force, "force", false, "rewrite NAME.creds if it exists, with the permissions of --as")
	all := &cobra.Command{
		Use:   "mint-all",
		Short: "Write the creds file of every identity of the permission table (one per service, client, admin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := authority()
			if err != nil {
				return err
			}
			paths, err := a.MintAll()
			if err != nil {
				return err
			}
			for _, id := range bus.Identities() {
				fmt.Fprintf(cmd.OutOrStdout(), "%-12s %s\n", id.Name, paths[id.Name])
			}
			return nil
		},
	}
	var jwtDir string
	conf := &cobra.Command{
		Use:   "server-config",
		Short: "Print the nats-server configuration that trusts these identities (operator, accounts, resolver)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := authority()
			if err != nil {
				return err
			}
			c, err := a.ServerConfig(jwtDir)
			if err != nil {
				return err
			}
			fmt.Fprint(cmd.OutOrStdout(), c)
			return nil
		},
	}
	conf.Flags().StringVar(&jwtDir, "jwt-dir", "/data/jwt", "directory on each NATS server's own volume where it keeps the account JWTs pushed to it, so that a revocation outlives a restart (empty: in memory only, a revocation lasts until the server restarts)")
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "authority directory (default: nats-auth in the state dir)")
	cmd.AddCommand(mint, all, conf, newIdentityTLSCmd(), newIdentityDashboardUserCmd(), newIdentityRedisACLCmd())
	return cmd
}

// newIdentityTLSCmd makes the certificates of a Kubernetes deployment: a
// CA and the server certificates of NATS (client and route ports) and
// Redis, named as the prod overlay's Services are.
func newIdentityTLSCmd() *cobra.Command {
	var out, namespace string
	var concentrator []string
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Write a CA and the NATS, Redis, dashboard and host agents' concentrator server certificates of a Kubernetes deployment (Secrets podvisor-nats-tls, podvisor-redis-tls, podvisor-dashboard-tls, podvisor-hostagent-tls)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError("--out: required (a directory for ca.pem and the certificates)")
			}
			ca, err := pki.LoadOrCreateCA(out)
			if err != nil {
				return err
			}
			svc := func(name string) []string {
				return []string{name, name + "." + namespace, name + "." + namespace + ".svc", name + "." + namespace + ".svc.cluster.local"}
			}
			// Routes dial the peers by their headless names.
			natsHosts := append(svc("nats"), "*.nats-headless", "*.nats-headless."+namespace+".svc", "*.nats-headless."+namespace+".svc.cluster.local", "localhost")
			for _, c := range []struct {
				name  string
				hosts []string
			}{{"nats", natsHosts}, {"redis", append(svc("redis"), "localhost")}, {"dashboard", append(svc("dashboard"), "localhost")},
				// The concentrator: the hosts connect pod VMs' serial ports
				// to the address they reach its load balancer at.
				{"hostagent", append(append(svc("hostagent"), svc("hostagent-concentrator")...), concentrator...)}} {
				cert, key, err := ca.Issue(c.name, c.hosts...)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%-9s cert %s key %s\n", c.name, cert, key)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ca        %s\n", ca.CAFile())
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for the CA and the certificates (the CA is reused when present)")
	cmd.Flags().StringVar(&namespace, "namespace", "podvisor", "namespace of the deployment (the certificates name its Services)")
	cmd.Flags().StringSliceVar(&concentrator, "concentrator", nil, "names or addresses at which the hypervisor hosts reach the host agents' concentrator (PODVISOR_PROVISIONER_CHANNEL_URI's host), added to its certificate")
	return cmd
}

// newIdentityDashboardUserCmd issues a dashboard user's client
// certificate from the deployment's CA: the dashboard admits only
// certificates of its own organization, not the servers' that the same CA
// signs.
func newIdentityDashboardUserCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "dashboard-user NAME",
		Short: "Write a client certificate with which NAME opens the dashboard (the CA of 'identity tls --out')",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError("--out: required (the directory of 'podvisor identity tls --out', holding the CA)")
			}
			if !dashboardUserName.MatchString(args[0]) {
				return usageError("NAME %q: want lowercase letters, digits and dashes", args[0])
			}
			if _, err := os.Stat(filepath.Join(out, "ca.pem")); err != nil {
				return usageError("--out %s: no ca.pem (run 'podvisor identity tls --out %s' first)", out, out)
			}
			ca, err := pki.LoadOrCreateCA(out)
			if err != nil {
				return err
			}
			cert, key, err := ca.IssueAs("dashboard-user-"+args[0], []string{dashboard.ClientOrganization})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cert %s key %s\n", cert, key)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory of the deployment's CA (where 'podvisor identity tls' wrote it)")
	return cmd
}

var dashboardUserName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// newIdentityRedisACLCmd writes the Redis ACL file of a Kubernetes
// deployment: no default user, one user per service that uses Redis with
// the least it needs, and a probe user that may only PING.
func newIdentityRedisACLCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "redis-acl",
		Short: "Write users.acl and a password file per Redis user (imagecache read-write, scheduler and dashboard read-only, probe ping-only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError("--out: required (a directory for users.acl and the passwords)")
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			acl, err := redisserver.WriteACL(out, redisserver.DeploymentUsers()...)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), acl)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for users.acl and <user>-password (mode 0600)")
	return cmd
}

// newTopologyCmd declares the streams and buckets, as the admin identity
// must (services running as their own identities may not).
func newTopologyCmd(g *globals) *cobra.Command {
	var replicas int
	cmd := &cobra.Command{
		Use:   "topology",
		Short: "Declare (or update) the streams and KV buckets; needs the admin identity's creds",
		Long: `topology declares (or updates) every stream and KV bucket, as 'podvisor up' does. It needs the
admin identity: pass its creds file with --nats-creds (or PODVISOR_NATS_CREDS); 'podvisor up' keeps
it at nats-auth/admin.creds in its state dir. With another identity the server refuses the first
request and topology exits 1 at once, naming the subject refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			// A request the identity may not publish gets no answer, only
			// the server's asynchronous permissions violation: end the wait
			// at that, not at the timeout.
			ctx, refused := context.WithCancelCause(ctx)
			defer refused(nil)
			nc := b.Conn()
			prev := nc.ErrorHandler()
			nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
				if errors.Is(err, nats.ErrPermissionViolation) {
					refused(err)
					return
				}
				if prev != nil {
					prev(c, sub, err)
				}
			})
			if err := b.EnsureTopology(ctx, bus.WithReplicas(replicas)); err != nil {
				if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
					return &exitError{code: 1, err: fmt.Errorf("declare the topology: this identity (%s) may not: %v; "+
						"it takes the admin identity's creds: --nats-creds %s", g.credsName(), cause, g.adminCredsHint())}
				}
				return fmt.Errorf("declare the topology (as the admin identity?): %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "streams and buckets declared")
			return nil
		},
	}
	cmd.Flags().IntVar(&replicas, "replicas", 1, "replicas of every stream and bucket (3 on a three-node NATS)")
	return cmd
}

// credsName names the creds file the CLI connects with, for a message.
func (g *globals) credsName() string {
	if c, err := g.natsConn(); err == nil && c.CredsFile != "" {
		return c.CredsFile
	}
	return "no creds file"
}

// adminCredsHint is where the admin identity's creds are: those `podvisor
// up` minted in the state dir when they are there.
func (g *globals) adminCredsHint() string {
	p := filepath.Join(g.stateDir, "nats-auth", "admin.creds")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "<the admin identity's creds file> (podvisor up writes nats-auth/admin.creds in its state dir)"
}

func identityNames() string {
	var s string
	for i, id := range bus.Identities() {
		if i > 0 {
			s += ", "
		}
		s += id.Name
	}
	return s
}
