package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/bus"
	recstore "github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func newNetworkCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "network export|restore|switch|data",
		Aliases: []string{"net"},
		Short:   "Export, restore and back up networks; read and write their pass-through data",
		Long: `network works on logical networks and the switches that realize them:

  export NAME [--version N]        print a Network manifest that 'podvisor apply -f' re-creates
  restore NAME --version N         re-apply an earlier version (stored as a new version)
  switch export SWITCH [-o FILE]   the switch's configuration as vCenter has it now
  switch import -f FILE            apply such a file to a new or an existing switch
  data set|get|rm                  opaque pass-through data for management applications`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError("network: name a subcommand (export, restore, switch, data)")
		},
	}
	cmd.AddCommand(newNetworkExportCmd(g), newNetworkRestoreCmd(g), newNetworkSwitchCmd(g), newNetworkDataCmd(g))
	return cmd
}

func newNetworkExportCmd(g *globals) *cobra.Command {
	var version int64
	cmd := &cobra.Command{
		Use:   "export NAME [--version N]",
		Short: "Print a network as a manifest that 'podvisor apply -f' re-creates",
		Long: `export prints one stored version of a network (the current one by default) as a Network
manifest: 'podvisor network export web > web.yaml', later 'podvisor apply -f web.yaml' on this or
another installation declares it again. The file outlives the network's bounded history.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				kv, err := b.KV(ctx, events.BucketNetworks)
				if err != nil {
					return err
				}
				data, err := netconfig.ExportFromKV(ctx, kv, args[0], version)
				if err != nil {
					return &exitError{code: 1, err: err}
				}
				_, err = g.stdout.Write(data)
				return err
			})
		},
	}
	cmd.Flags().Int64Var(&version, "version", 0, "the stored version to export (default: the current one)")
	return cmd
}

func newNetworkRestoreCmd(g *globals) *cobra.Command {
	var (
		version int64
		wait    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "restore NAME --version N",
		Short: "Re-apply an earlier version of a network",
		Long: `restore publishes network.restore.requested: network-config stores version N's spec as a new
version and pushes it to the hosts. restore waits up to --wait for the new version to be applied and
exits non-zero when network-config refuses, with the reason: RestoreFailed (the version is no longer
in the history), InvalidSpec (its spec no longer fits) or InUse (its spec.cidr or spec.gateway would
strand addresses pods or VMs hold on the network).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version <= 0 {
				return usageError("restore: --version N is required (a version from 'podvisor describe network %s')", args[0])
			}
			return g.restoreNetwork(cmd.Context(), args[0], version, wait)
		},
		Annotations: requests(),
	}
	cmd.Flags().Int64Var(&version, "version", 0, "the version to restore")
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for network-config (0: do not wait)")
	return cmd
}

// restoreNetwork publishes the restore and follows the network record
// until the version it created is applied, or the restore is refused.
func (g *globals) restoreNetwork(ctx context.Context, name string, version int64, wait time.Duration) error {
	p := &events.NetworkRestoreRequested{Name: name, Version: version}
	if err := p.Validate(); err != nil {
		return usageError("%v", err)
	}
	return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
		var before events.NetworkRecord
		if err := getRecord(ctx, b, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name, &before); err != nil {
			return err
		}
		if _, ok := before.FindVersion(version); !ok {
			return &exitError{code: 1, err: fmt.Errorf("network %s has no version %d in its history (latest %d)", name, version, before.LatestVersion())}
		}
		ev, err := bus.NewEvent(CLISource, events.TypeNetworkRestoreRequested, name, p)
		if err != nil {
			return err
		}
		if err := b.Publish(ctx, ev); err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "network %s restore of version %d requested\n", name, version)
		if wait <= 0 {
			return nil
		}
		nets, err := b.KV(ctx, events.BucketNetworks)
		if err != nil {
			return err
		}
		w := &networkWait{name: name, event: ev.ID(), since: before.UpdatedAt}
		timedOut, err := awaitNetworks(ctx, nets, []*networkWait{w}, time.Now().Add(wait))
		switch a := w.answer; {
		case err != nil:
			return err
		case len(timedOut) > 0:
			fmt.Fprintf(g.stdout, "not applied within %s; see 'podvisor describe network %s'\n", wait, name)
			return nil
		case a.rolledBack:
			return &exitError{code: 1, err: fmt.Errorf("restore of network %s version %d rolled back: %s", name, version, a.message)}
		case a.refused:
			return &exitError{code: 1, err: fmt.Errorf("restore of network %s refused: %s: %s", name, a.reason, a.message)}
		case a.supersededBy > 0:
			fmt.Fprintf(g.stdout, "network %s version %d (restored from version %d) superseded by version %d\n", name, a.version, version, a.supersededBy)
		default:
			fmt.Fprintf(g.stdout, "network %s version %d (restored from version %d) %s\n", name, a.version, version, strings.ToLower(a.status))
		}
		return nil
	})
}

// networkRefusals are the reasons network-config records on a network
// whose declaration or restore it refused, storing no version: the spec
// does not fit here (InvalidSpec), it would strand addresses held on the
// network (InUse), or the version to restore is gone (RestoreFailed).
var networkRefusals = []string{netconfig.ReasonInvalidSpec, netconfig.ReasonInUse, netconfig.ReasonRestoreFailed}

// networkAnswer is network-config's answer to one request about a network
// (network.declared, network.restore.requested), as its record tells it.
type networkAnswer struct {
	// refused: no version was stored (reason and message say why), or the
	// version was stored and rolled back (rolledBack; the version's reason
	// and message).
	refused, rolledBack bool
	reason, message     string
	// version is the version the request created, status the network's
	// status once it is no longer Pending (Ready, Degraded), and
	// supersededBy a later version that replaced it meanwhile.
	version      int64
	status       string
	supersededBy int64
}

// networkAnswerOf reads the answer to the request whose CloudEvent id is
// event from the network's record r, if there is one yet. A request that
// stored a version is answered once that version is applied (the network no
// longer Pending at it), rolled back or superseded. One that stored none is
// refused when the record carries a refusal reason naming the request
// (RefusedEvent), or, from a network-config that names none, one written
// after since: the UpdatedAt of the record read before the request was
// published (the record's own clock keeps the client's out of the
// comparison). A request network-config has not handled yet, or that
// changed nothing, has no answer.
func networkAnswerOf(r *events.NetworkRecord, event string, since time.Time) (networkAnswer, bool) {
	if r == nil {
		return networkAnswer{}, false
	}
	if v, ok := r.VersionByEvent(event); ok {
		a := networkAnswer{version: v.Version}
		switch {
		case v.Status == events.NetworkVersionRolledBack:
			a.refused, a.rolledBack, a.reason, a.message = true, true, v.Reason, v.Message
		case r.Version == v.Version && r.Status == events.NetworkStatusPending:
			return a, false
		case r.Version == v.Version:
			a.status = r.Status
			if r.Status == events.NetworkStatusDegraded {
				a.reason, a.message = r.Reason, r.Message
			}
		case r.LatestVersion() > v.Version:
			a.supersededBy = r.LatestVersion()
		default:
			return a, false
		}
		return a, true
	}
	if slices.Contains(networkRefusals, r.Reason) && (r.RefusedEvent == event || r.RefusedEvent == "" && r.UpdatedAt.After(since)) {
		return networkAnswer{refused: true, reason: r.Reason, message: r.Message}, true
	}
	return networkAnswer{}, false
}

// networkWait is one request about a network that a command waits on.
type networkWait struct {
	name   string    // the network
	event  string    // the request's CloudEvent id
	since  time.Time // UpdatedAt of the record before the request (zero: none)
	answer networkAnswer
}

// awaitNetworks follows the records of the networks of waits until each
// request has its answer (set in the wait) or deadline passes, and returns
// those still unanswered then. Records are read every 200 ms: a request
// about a network is answered in its record, not by an event.
func awaitNetworks(ctx context.Context, nets jetstream.KeyValue, waits []*networkWait, deadline time.Time) ([]*networkWait, error) {
	store := recstore.New[events.NetworkRecord](nets, "network")
	pending := slices.Clone(waits)
	for {
		left := pending[:0]
		for _, w := range pending {
			r, _, err := store.Get(ctx, events.NetworkRecordKey(w.name))
			if err != nil {
				return nil, err
			}
			if a, ok := networkAnswerOf(r, w.event, w.since); ok {
				w.answer = a
				continue
			}
			left = append(left, w)
		}
		pending = left
		if len(pending) == 0 || !time.Now().Before(deadline) {
			return pending, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(200*time.Millisecond, time.Until(deadline))):
		}
	}
}

func newNetworkSwitchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "switch export|import",
		Short: "Back up a distributed switch's realized configuration and apply it again",
		Long: `switch export reads a distributed switch back from vCenter (GOVC_URL, as 'describe vm'): its
maximum MTU, member hosts and port groups with their VLAN, security policy and description, as they
are now, not as podvisor's records want them. switch import applies such a file to the switch it
came from (repairing drift) or, with --switch, to another or a new one, and joins the file's hosts
that exist with --join-hosts. Nothing the file does not name is removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return usageError("network switch: export or import") },
	}
	var out string
	export := &cobra.Command{
		Use:   "export SWITCH [-o FILE]",
		Short: "Write a switch's configuration as vCenter has it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			f, done, err := g.fabric(ctx)
			if err != nil {
				return err
			}
			defer done()
			cfg, err := f.ExportSwitch(ctx, args[0])
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			data, err := yaml.Marshal(cfg)
			if err != nil {
				return err
			}
			if out == "" || out == "-" {
				_, err = g.stdout.Write(data)
				return err
			}
			if err := os.WriteFile(out, data, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "switch %s: %d port groups, %d hosts written to %s\n", cfg.Name, len(cfg.PortGroups), len(cfg.Hosts), out)
			return nil
		},
	}
	export.Flags().StringVarP(&out, "output", "o", "", "file to write (default: standard output)")

	var (
		file, target string
		join         bool
	)
	imp := &cobra.Command{
		Use:   "import -f FILE [--switch NAME] [--join-hosts]",
		Short: "Apply an exported switch configuration to a new or an existing switch",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageError("switch import: -f FILE is required (- for standard input)")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(g.stdin)
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return err
			}
			var cfg fabric.SwitchConfig
			if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
				return usageError("%s: %v", displayName(file), err)
			}
			if err := cfg.Validate(); err != nil {
				return usageError("%s: %v", displayName(file), err)
			}
			ctx := cmd.Context()
			f, done, err := g.fabric(ctx)
			if err != nil {
				return err
			}
			defer done()
			res, err := f.ImportSwitch(ctx, &cfg, target, join)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			name := target
			if name == "" {
				name = cfg.Name
			}
			verb := "updated"
			if res.Created {
				verb = "created"
			}
			fmt.Fprintf(g.stdout, "switch %s %s: %d port groups changed (%s), %d hosts joined\n", name, verb,
				len(res.PortGroups), strings.Join(res.PortGroups, ", "), len(res.Joined))
			if len(res.MissingHosts) > 0 {
				fmt.Fprintf(g.stdout, "hosts of the file not in this datacenter: %s\n", strings.Join(res.MissingHosts, ", "))
			}
			return nil
		},
	}
	imp.Flags().StringVarP(&file, "filename", "f", "", "the exported file, - for standard input")
	imp.Flags().StringVar(&target, "switch", "", "switch to apply it to (default: the one it was exported from); created when absent")
	imp.Flags().BoolVar(&join, "join-hosts", false, "make the file's member hosts that exist here join the switch")
	cmd.AddCommand(export, imp)
	return cmd
}

// fabric connects to vCenter as the env file says and returns the switch
// layer network-config uses.
func (g *globals) fabric(ctx context.Context) (*fabric.Fabric, func(), error) {
	url, err := g.endpoint("", "GOVC_URL")
	if err != nil {
		return nil, nil, err
	}
	cfg := vsphere.Config{URL: url, Insecure: os.Getenv("GOVC_INSECURE") != "0", Datacenter: os.Getenv("GOVC_DATACENTER")}
	sess, err := vsphere.Connect(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("vCenter: %w", err)
	}
	if sess.Datacenter == nil {
		sess.Close(context.WithoutCancel(ctx))
		return nil, nil, errors.New("vCenter: no datacenter (set GOVC_DATACENTER)")
	}
	return fabric.New(sess.Client.Client, sess.Datacenter), func() { sess.Close(context.WithoutCancel(ctx)) }, nil
}
