package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/podvisor/podvisor/shared/bus"
)

// resource describes one kind of object `get` can print: the KV bucket that
// holds its records and how to show one.
type resource struct {
	// names the kind answers to; the first is the canonical plural.
	names      []string
	bucket     string
	namespaced bool
	header     []string
	// decode turns a KV value into the record; row renders it; object is
	// what -o json/yaml prints (the record itself unless set).
	decode func(value []byte) (record, error)
	// skip, when set, names keys of the bucket that hold no record (the
	// migration service's leader lease).
	skip func(key string) bool
	// list, when set, reads records from somewhere other than a KV bucket
	// (images live in the Redis image cache); -w then polls.
	list func(ctx context.Context, g *globals) ([]record, error)
}

// record is one decoded object.
type record interface {
	// Namespace and Name identify the object (Namespace "" when cluster-scoped).
	Namespace() string
	Name() string
	// Row is the table row, without the NAMESPACE column.
	Row(now time.Time) []string
	// Object is what -o json and -o yaml print.
	Object() any
}

var resources []*resource

func registerResource(r *resource) { resources = append(resources, r) }

func lookupResource(name string) (*resource, bool) {
	for _, r := range resources {
		for _, n := range r.names {
			if n == name {
				return r, true
			}
		}
	}
	return nil, false
}

func resourceNames() string {
	var names []string
	for _, r := range resources {
		names = append(names, r.names[0])
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

type getOptions struct {
	namespace     string
	allNamespaces bool
	output        string
	watch         bool
}

func newGetCmd(g *globals) *cobra.Command {
	o := &getOptions{}
	cmd := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "Print pods, hosts, networks, images or migrations from the services' records",
		Long: `get prints objects from the records the services keep (JetStream KV buckets; images from the
Redis image cache). Kinds: pods (pod, po), hosts (host), networks (network, net), images (image),
migrations (migration). -o json prints a pod in Kubernetes shape (metadata, spec.nodeName, status).`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch o.output {
			case "table", "json", "yaml", "wide":
			default:
				return usageError("-o %q: want table, json or yaml", o.output)
			}
			res, ok := lookupResource(args[0])
			if !ok {
				return usageError("unknown kind %q: want one of %s", args[0], resourceNames())
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			if res.list != nil {
				return runGetList(cmd.Context(), g, res, name, o)
			}
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return runGet(cmd.Context(), b, res, name, o, g.stdout)
		},
	}
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "default", "namespace of namespaced kinds")
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "list every namespace")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	cmd.Flags().BoolVarP(&o.watch, "watch", "w", false, "after listing, print changes as they happen")
	return cmd
}

func (o *getOptions) wants(res *resource, rec record, name string) bool {
	if name != "" && rec.Name() != name {
		return false
	}
	if res.namespaced && !o.allNamespaces && rec.Namespace() != o.namespace {
		return false
	}
	return true
}

func runGet(ctx context.Context, b *bus.Bus, res *resource, name string, o *getOptions, out io.Writer) error {
	kv, err := b.KV(ctx, res.bucket)
	if err != nil {
		return fmt.Errorf("%s: %w", res.names[0], err)
	}
	var recs []record
	watchOpts := []jetstream.WatchOpt{}
	if !o.watch {
		watchOpts = append(watchOpts, jetstream.IgnoreDeletes())
	}
	w, err := kv.WatchAll(ctx, watchOpts...)
	if err != nil {
		return fmt.Errorf("%s: %w", res.names[0], err)
	}
	defer w.Stop()
	// The watcher first replays the current value of every key, then a nil
	// marks the end of the initial values. last keeps each key's record so
	// that a deletion seen while watching can say what went away.
	last := map[string]record{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		if e.Operation() != jetstream.KeyValuePut || (res.skip != nil && res.skip(e.Key())) {
			continue
		}
		rec, err := res.decode(e.Value())
		if err != nil {
			return fmt.Errorf("%s %s: %w", res.names[0], e.Key(), err)
		}
		last[e.Key()] = rec
		if o.wants(res, rec, name) {
			recs = append(recs, rec)
		}
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Namespace() != recs[j].Namespace() {
			return recs[i].Namespace() < recs[j].Namespace()
		}
		return recs[i].Name() < recs[j].Name()
	})
	if name != "" && len(recs) == 0 && !o.watch {
		what := name
		if res.namespaced {
			what = o.namespace + "/" + name
		}
		return &exitError{code: 1, err: fmt.Errorf("%s %q not found", strings.TrimSuffix(res.names[0], "s"), what)}
	}
	p := &printer{res: res, o: o, out: out, tw: tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)}
	if err := p.list(recs, name != ""); err != nil {
		return err
	}
	if !o.watch {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch closed by the server")
			}
			if e == nil || (res.skip != nil && res.skip(e.Key())) {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				if rec, ok := last[e.Key()]; ok {
					delete(last, e.Key())
					if o.wants(res, rec, name) {
						if err := p.deleted(rec); err != nil {
							return err
						}
					}
				}
				continue
			}
			rec, err := res.decode(e.Value())
			if err != nil {
				continue
			}
			last[e.Key()] = rec
			if !o.wants(res, rec, name) {
				continue
			}
			if err := p.one(rec); err != nil {
				return err
			}
		}
	}
}

// printer writes records as a table, JSON or YAML.
type printer struct {
	res    *resource
	o      *getOptions
	out    io.Writer
	tw     *tabwriter.Writer
	header bool
}

func (p *printer) list(recs []record, single bool) error {
	switch p.o.output {
	case "json", "yaml":
		if single && len(recs) == 1 {
			return p.encode(recs[0].Object())
		}
		items := make([]any, 0, len(recs))
		for _, r := range recs {
			items = append(items, r.Object())
		}
		return p.encode(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	}
	if len(recs) == 0 && !p.o.watch {
		where := ""
		if p.res.namespaced && !p.o.allNamespaces {
			where = " in namespace " + p.o.namespace
		}
		fmt.Fprintf(p.out, "No %s found%s.\n", p.res.names[0], where)
		return nil
	}
	for _, r := range recs {
		p.row(r)
	}
	return p.tw.Flush()
}

func (p *printer) one(r record) error {
	if p.o.output == "json" || p.o.output == "yaml" {
		return p.encode(r.Object())
	}
	p.row(r)
	return p.tw.Flush()
}

// deleted reports, while watching, that a record went away.
func (p *printer) deleted(r record) error {
	what := r.Name()
	if r.Namespace() != "" {
		what = r.Namespace() + "/" + r.Name()
	}
	if p.o.output == "json" || p.o.output == "yaml" {
		return p.encode(map[string]string{"event": "DELETED", "namespace": r.Namespace(), "name": r.Name()})
	}
	p.tw.Flush()
	_, err := fmt.Fprintf(p.out, "%s %s deleted\n", strings.TrimSuffix(p.res.names[0], "s"), what)
	return err
}

func (p *printer) row(r record) {
	if !p.header {
		h := p.res.header
		if p.res.namespaced {
			h = append([]string{"NAMESPACE"}, h...)
		}
		fmt.Fprintln(p.tw, strings.Join(h, "\t"))
		p.header = true
	}
	cells := r.Row(time.Now())
	if p.res.namespaced {
		cells = append([]string{r.Namespace()}, cells...)
	}
	fmt.Fprintln(p.tw, strings.Join(cells, "\t"))
}

func (p *printer) encode(v any) error {
	if p.o.output == "yaml" {
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		if p.o.watch {
			fmt.Fprintln(p.out, "---")
		}
		_, err = p.out.Write(b)
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(p.out, string(b))
	return err
}

// age renders a duration the way kubectl does: 45s, 3m12s, 5h, 2d.
func age(since, now time.Time) string {
	if since.IsZero() {
		return "<unknown>"
	}
	d := now.Sub(since)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 10*time.Minute:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// dash renders an empty cell as "-" so columns stay readable.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesGiB renders bytes in GiB with one decimal.
func bytesGiB(b int64) string { return fmt.Sprintf("%.1fGi", float64(b)/(1<<30)) }

// runGetList prints a resource that is not in a KV bucket; -w re-reads it
// every two seconds and prints the rows that changed.
func runGetList(ctx context.Context, g *globals, res *resource, name string, o *getOptions) error {
	p := &printer{res: res, o: o, out: g.stdout, tw: tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)}
	seen := map[string]string{}
	for first := true; ; first = false {
		recs, err := res.list(ctx, g)
		if err != nil {
			return err
		}
		var keep []record
		for _, r := range recs {
			if o.wants(res, r, name) {
				keep = append(keep, r)
			}
		}
		if first {
			if name != "" && len(keep) == 0 && !o.watch {
				return &exitError{code: 1, err: fmt.Errorf("%s %q not found", strings.TrimSuffix(res.names[0], "s"), name)}
			}
			if err := p.list(keep, name != ""); err != nil {
				return err
			}
		} else {
			for _, r := range keep {
				row := strings.Join(r.Row(time.Time{}), "\t")
				if seen[r.Name()] != row {
					if err := p.one(r); err != nil {
						return err
					}
				}
			}
		}
		for _, r := range keep {
			seen[r.Name()] = strings.Join(r.Row(time.Time{}), "\t")
		}
		if !o.watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}
