package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// dataScope holds the scope flags of `network data`: exactly one names the
// object.
type dataScope struct{ sw, pg, port, host string }

func (d *dataScope) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&d.sw, "switch", "", "a distributed switch (its port groups and ports inherit)")
	f.StringVar(&d.pg, "portgroup", "", "a port group, pv-<network> (its ports inherit)")
	f.StringVar(&d.port, "port", "", "a pod's port: NETWORK/NAMESPACE/POD")
	f.StringVar(&d.host, "host", "", "a host")
}

func (d *dataScope) scope() (events.NetworkDataScope, error) {
	var set []events.NetworkDataScope
	for _, s := range []events.NetworkDataScope{{Kind: events.NetworkDataSwitch, Name: d.sw}, {Kind: events.NetworkDataPortGroup, Name: d.pg},
		{Kind: events.NetworkDataPort, Name: d.port}, {Kind: events.NetworkDataHost, Name: d.host}} {
		if s.Name != "" {
			set = append(set, s)
		}
	}
	if len(set) != 1 {
		return events.NetworkDataScope{}, usageError("name exactly one object: --switch, --portgroup, --port or --host")
	}
	return set[0], nil
}

// splitDataKey splits NAMESPACE/KEY.
func splitDataKey(s string) (namespace, key string, err error) {
	namespace, key, ok := strings.Cut(s, "/")
	if !ok || namespace == "" || key == "" {
		return "", "", usageError("%q: want NAMESPACE/KEY", s)
	}
	return namespace, key, nil
}

func newNetworkDataCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data register|set|get|rm",
		Short: "Opaque pass-through data of management applications, delivered to their host modules",
		Long: `A management application registers a namespace, then attaches NAMESPACE/KEY = VALUE to a switch,
a port group, a pod's port or a host. network-config keeps it (KV net-data) and every host agent
hands it, as it applies on its host, to the module registered there for the namespace. A value set on
a switch is inherited by its port groups and their ports, one on a port group by its ports, unless
the narrower object sets the key itself. Data in an unregistered namespace is refused, and so is a
value set on an object podvisor does not know (a switch or port group no network is on, a port of no
pod or VM on that network, an unknown host): set it once the object exists.

  podvisor network data register fw.acme.example --owner acme-fw
  podvisor network data set fw.acme.example/profile strict --switch pv-dvs
  podvisor network data set fw.acme.example/profile open --port default/default/web
  podvisor network data get --portgroup pv-default
  podvisor network data rm fw.acme.example/profile --port default/default/web`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError("network data: register, set, get or rm")
		},
	}
	var owner, desc string
	register := &cobra.Command{
		Use:   "register NAMESPACE [--owner NAME] [--description TEXT]",
		Short: "Register a namespace for a management application",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := &events.NetworkDataRegisterRequested{Namespace: args[0], Owner: owner, Description: desc}
			return g.publishData(cmd.Context(), events.TypeNetworkDataRegisterRequested, p, "namespace "+args[0]+" registered",
				func(b *bus.Bus) (bool, error) {
					ns, err := dataNamespaces(cmd.Context(), b)
					_, ok := ns[args[0]]
					return ok, err
				})
		},
		Annotations: requests(),
	}
	register.Flags().StringVar(&owner, "owner", "", "the management application")
	register.Flags().StringVar(&desc, "description", "", "what the namespace holds")

	var setScope, rmScope, getScope dataScope
	set := &cobra.Command{
		Use:   "set NAMESPACE/KEY VALUE (--switch S | --portgroup P | --port N/NS/POD | --host H)",
		Short: "Attach a value to an object that exists",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, key, err := splitDataKey(args[0])
			if err != nil {
				return err
			}
			sc, err := setScope.scope()
			if err != nil {
				return err
			}
			p := &events.NetworkDataSetRequested{Scope: sc, Namespace: ns, Key: key, Value: args[1]}
			return g.publishData(cmd.Context(), events.TypeNetworkDataSetRequested, p, fmt.Sprintf("%s set on %s", args[0], sc),
				func(b *bus.Bus) (bool, error) {
					r, err := dataRecord(cmd.Context(), b, sc)
					return r != nil && r.Values[args[0]] == args[1], err
				})
		},
		Annotations: requests(),
	}
	setScope.flags(set)
	rm := &cobra.Command{
		Use:   "rm NAMESPACE/KEY (--switch S | --portgroup P | --port N/NS/POD | --host H)",
		Short: "Remove a value from an object (it inherits the key again)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, key, err := splitDataKey(args[0])
			if err != nil {
				return err
			}
			sc, err := rmScope.scope()
			if err != nil {
				return err
			}
			p := &events.NetworkDataRemoveRequested{Scope: sc, Namespace: ns, Key: key}
			return g.publishData(cmd.Context(), events.TypeNetworkDataRemoveRequested, p, fmt.Sprintf("%s removed from %s", args[0], sc),
				func(b *bus.Bus) (bool, error) {
					r, err := dataRecord(cmd.Context(), b, sc)
					if r == nil {
						return err == nil, err
					}
					_, still := r.Values[args[0]]
					return !still, err
				})
		},
		Annotations: requests(),
	}
	rmScope.flags(rm)
	get := &cobra.Command{
		Use:   "get [NAMESPACE[/KEY]] (--switch S | --portgroup P | --port N/NS/POD | --host H)",
		Short: "Print an object's effective data and where each value comes from",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sc, err := getScope.scope()
			if err != nil {
				return err
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				chain, err := inheritance(ctx, b, sc)
				if err != nil {
					return err
				}
				var recs []*events.NetworkDataRecord
				for _, s := range chain {
					r, err := dataRecord(ctx, b, s)
					if err != nil {
						return err
					}
					recs = append(recs, r)
				}
				eff := events.EffectiveNetworkData(recs...)
				prefix := ""
				if len(args) == 1 {
					prefix = args[0]
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tVALUE\tFROM")
				n := 0
				for _, k := range events.SortedKeys(eff) {
					if prefix != "" && k != prefix && !strings.HasPrefix(k, strings.TrimSuffix(prefix, "/")+"/") {
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", k, eff[k].Value, eff[k].From)
					n++
				}
				if n == 0 {
					fmt.Fprintf(g.stdout, "no data on %s\n", sc)
					return nil
				}
				return tw.Flush()
			})
		},
	}
	getScope.flags(get)
	cmd.AddCommand(register, set, get, rm)
	return cmd
}

// publishData checks that the namespace is registered (for set and rm),
// publishes the request and waits up to 10 s for network-config to record
// it (done reads the records).
func (g *globals) publishData(ctx context.Context, ceType string, p events.Payload, what string, done func(*bus.Bus) (bool, error)) error {
	if err := p.Validate(); err != nil {
		return usageError("%v", err)
	}
	return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
		var namespace string
		switch v := p.(type) {
		case *events.NetworkDataSetRequested:
			namespace = v.Namespace
			// Only set: a value may be removed from an object that is gone.
			if err := checkDataTarget(ctx, b, v.Scope); err != nil {
				return err
			}
		case *events.NetworkDataRemoveRequested:
			namespace = v.Namespace
		}
		if namespace != "" {
			ns, err := dataNamespaces(ctx, b)
			if err != nil {
				return err
			}
			if _, ok := ns[namespace]; !ok {
				return &exitError{code: 1, err: fmt.Errorf("namespace %s is not registered: a management application registers it first ('podvisor network data register %s')", namespace, namespace)}
			}
		}
		ev, err := bus.NewEvent(CLISource, ceType, p.ObjectKey(), p)
		if err != nil {
			return err
		}
		if err := b.Publish(ctx, ev); err != nil {
			return err
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			ok, err := done(b)
			if err != nil {
				return err
			}
			if ok {
				fmt.Fprintln(g.stdout, what)
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		fmt.Fprintf(g.stdout, "requested; network-config has not recorded it within 10s (see 'podvisor events')\n")
		return nil
	})
}

// checkDataTarget refuses a value for an object podvisor does not know. The
// host agents deliver the data of themselves and of the switches, port
// groups and ports they carry, so a value on any other name would be kept
// and never delivered: a misspelt target is an error, named by its flag.
func checkDataTarget(ctx context.Context, b *bus.Bus, sc events.NetworkDataScope) error {
	unknown := func(format string, args ...any) error {
		return &exitError{code: 1, err: fmt.Errorf("--%s %s: %s", sc.Kind, sc.Name, fmt.Sprintf(format, args...))}
	}
	switch sc.Kind {
	case events.NetworkDataSwitch, events.NetworkDataPortGroup:
		nets, err := readRecords[events.NetworkRecord](ctx, b, events.BucketNetworks)
		if err != nil {
			return err
		}
		for _, n := range nets {
			if sc.Kind == events.NetworkDataSwitch && n.Switch == sc.Name || sc.Kind == events.NetworkDataPortGroup && n.PortGroup == sc.Name {
				return nil
			}
		}
		if sc.Kind == events.NetworkDataSwitch {
			return unknown("no network is on that switch (see 'podvisor get networks -o wide')")
		}
		return unknown("no network has that port group (a network's is pv-<network>; see 'podvisor get networks -o wide')")
	case events.NetworkDataHost:
		var h events.HostRecord
		if ok, err := findRecord(ctx, b, events.BucketHosts, events.HostRecordKey(sc.Name), &h); !ok {
			return cmp.Or(err, unknown("host not found (see 'podvisor get hosts')"))
		}
	case events.NetworkDataPort:
		network, rest, _ := strings.Cut(sc.Name, "/")
		ns, name, _ := strings.Cut(rest, "/")
		var n events.NetworkRecord
		if ok, err := findRecord(ctx, b, events.BucketNetworks, events.NetworkRecordKey(network), &n); !ok {
			return cmp.Or(err, unknown("network %s not found", network))
		}
		var pod events.PodRecord
		if ok, err := findRecord(ctx, b, events.BucketPods, events.PodRecordKey(ns, name), &pod); err != nil || ok {
			if err == nil && !slices.Contains(pod.Networks, network) {
				err = unknown("pod %s/%s is not on network %s (it is on %s)", ns, name, network, strings.Join(pod.Networks, ", "))
			}
			return err
		}
		var vm events.VMRecord
		ok, err := findRecord(ctx, b, events.BucketVMs, events.VMRecordKey(ns, name), &vm)
		if err != nil || ok && slices.Contains(vm.Spec.EffectiveNetworks(), network) {
			return err
		}
		return unknown("no pod or VM %s/%s on network %s", ns, name, network)
	}
	return nil
}

// findRecord reads a record; ok is false, with a nil error, when the key or
// its bucket does not exist.
func findRecord(ctx context.Context, b *bus.Bus, bucket, key string, v any) (ok bool, err error) {
	err = getRecord(ctx, b, bucket, key, key, v)
	var ee *exitError
	if errors.As(err, &ee) || errors.Is(err, jetstream.ErrBucketNotFound) {
		return false, nil
	}
	return err == nil, err
}

func dataNamespaces(ctx context.Context, b *bus.Bus) (map[string]events.NetworkDataNamespace, error) {
	var r events.NetworkDataNamespaces
	err := getRecord(ctx, b, events.BucketNetData, events.NetworkDataNamespacesKey, "namespaces", &r)
	var ee *exitError
	if errors.As(err, &ee) {
		return nil, nil // none registered yet
	}
	return r.Namespaces, err
}

// dataRecord reads an object's data; nil when it has none.
func dataRecord(ctx context.Context, b *bus.Bus, s events.NetworkDataScope) (*events.NetworkDataRecord, error) {
	kv, err := b.KV(ctx, events.BucketNetData)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, events.NetworkDataKey(s))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r events.NetworkDataRecord
	return &r, json.Unmarshal(e.Value(), &r)
}

// inheritance lists the objects whose data apply to s, widest first: a
// port group's switch (from its network's record), a port's switch and
// port group.
func inheritance(ctx context.Context, b *bus.Bus, s events.NetworkDataScope) ([]events.NetworkDataScope, error) {
	network := ""
	switch s.Kind {
	case events.NetworkDataPortGroup:
		network = strings.TrimPrefix(s.Name, "pv-")
	case events.NetworkDataPort:
		network, _, _ = strings.Cut(s.Name, "/")
	default:
		return []events.NetworkDataScope{s}, nil
	}
	var n events.NetworkRecord
	if err := getRecord(ctx, b, events.BucketNetworks, events.NetworkRecordKey(network), "network "+network, &n); err != nil {
		return nil, err
	}
	chain := []events.NetworkDataScope{{Kind: events.NetworkDataSwitch, Name: n.Switch}, {Kind: events.NetworkDataPortGroup, Name: n.PortGroup}}
	if s.Kind == events.NetworkDataPort {
		chain = append(chain, s)
	}
	return chain, nil
}
