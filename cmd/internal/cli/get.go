package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// resource describes one kind of object `get` can print: the KV bucket that
// holds its records and how to show one.
type resource struct {
	// names the kind answers to; the first is the canonical plural.
	names []string
	// kind is the object kind (Pod, Host, ...): -o name prints kind/name.
	kind       string
	bucket     string
	namespaced bool
	header     []string
	// wide, when set, adds wideHeader's columns for -o wide.
	wideHeader []string
	wide       func(record) []string
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

// kindsText lists the kinds get knows, each with its other names:
// "pods (pod, po), hosts (host), …", in the order they are registered.
func kindsText() string {
	var kinds []string
	for _, r := range resources {
		k := r.names[0]
		if len(r.names) > 1 {
			k += " (" + strings.Join(r.names[1:], ", ") + ")"
		}
		kinds = append(kinds, k)
	}
	return strings.Join(kinds, ", ")
}

// decodeRow is the decode of a resource whose row type R is its stored
// record embedded (struct{ events.PodRecord }): the JSON value decodes into
// the row as it would into the record, since the record's fields are the
// row's.
func decodeRow[R any, P interface {
	*R
	record
}](value []byte) (record, error) {
	r := P(new(R))
	return r, json.Unmarshal(value, r)
}

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
	selector      string
	showLabels    bool
	noHeaders     bool
	// names are the objects asked for, in the order given; none for all.
	names []string

	format outputFormat
	sel    labels.Selector
}

// complete parses the flags that need it.
func (o *getOptions) complete(out io.Writer) (printOptions, error) {
	f, err := parseOutput(o.output)
	if err != nil {
		return printOptions{}, err
	}
	o.format = f
	if o.sel, err = parseSelector(o.selector); err != nil {
		return printOptions{}, err
	}
	return printOptions{format: f, showLabels: o.showLabels, noHeaders: o.noHeaders, width: terminalWidth(out)}, nil
}

func newGetCmd(g *globals) *cobra.Command {
	o := &getOptions{}
	var kubeconfig bool
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...]",
		Short: "Print pods, VMs, hosts, networks, images, migrations, guest clusters… from the services' records",
		Long: `get prints objects from the records the services keep (JetStream KV buckets; images from the
Redis image cache). Kinds: ` + kindsText() + `.
-o json prints a pod in Kubernetes shape (metadata, spec.nodeName, status).
Several names print those objects in the order given; each one missing is an error (exit 1).`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeKindAndName(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			popts, err := o.complete(g.stdout)
			if err != nil {
				return err
			}
			res, ok := lookupResource(args[0])
			if !ok {
				return usageError("unknown kind %q: want one of %s", args[0], resourceNames())
			}
			o.names = args[1:]
			if kubeconfig {
				if res.kind != events.KindGuestCluster || len(o.names) != 1 {
					return usageError("--kubeconfig: only with get guestcluster NAME")
				}
				return g.printKubeconfig(cmd.Context(), o.namespace, o.names[0])
			}
			if res.list != nil {
				return runGetList(cmd.Context(), g, res, o, popts)
			}
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return runGet(cmd.Context(), b, res, o, popts, g.stdout)
		},
	}
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "default", "namespace of namespaced kinds")
	cmd.Flags().BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "list every namespace")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", outputHelp)
	cmd.Flags().BoolVarP(&o.watch, "watch", "w", false, "after listing, print changes as they happen")
	cmd.Flags().StringVarP(&o.selector, "selector", "l", "", "label selector (app=web, tier in (a,b), !canary); pods and hosts carry labels")
	cmd.Flags().BoolVar(&o.showLabels, "show-labels", false, "add a LABELS column")
	cmd.Flags().BoolVar(&o.noHeaders, "no-headers", false, "print table rows without the header")
	cmd.Flags().BoolVar(&kubeconfig, "kubeconfig", false, "with guestcluster NAME: print the guest cluster's admin kubeconfig")
	return cmd
}

func (o *getOptions) wants(res *resource, rec record) bool {
	if len(o.names) > 0 && !slices.Contains(o.names, rec.Name()) {
		return false
	}
	if res.namespaced && !o.allNamespaces && rec.Namespace() != o.namespace {
		return false
	}
	if o.sel != nil && !o.sel.Empty() && !o.sel.Matches(labels.Set(recordLabels(rec))) {
		return false
	}
	return true
}

// found puts the records of named objects in the order the names were
// given (records of one name keep their order). Each name that found nothing is an error, unless watching.
func (o *getOptions) found(res *resource, recs []record) ([]record, error) {
	rank := func(r record) int { return slices.Index(o.names, r.Name()) }
	sort.SliceStable(recs, func(i, j int) bool { return rank(recs[i]) < rank(recs[j]) })
	if o.watch {
		return recs, nil
	}
	var missing []error
	for _, name := range o.names {
		if !slices.ContainsFunc(recs, func(r record) bool { return r.Name() == name }) {
			what := name
			if res.namespaced && !o.allNamespaces {
				what = o.namespace + "/" + name
			}
			missing = append(missing, fmt.Errorf("%s %q not found", strings.ToLower(res.kind), what))
		}
	}
	if len(missing) > 0 {
		return recs, &exitError{code: 1, err: errors.Join(missing...)}
	}
	return recs, nil
}

func runGet(ctx context.Context, b *bus.Bus, res *resource, o *getOptions, popts printOptions, out io.Writer) error {
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
		if o.wants(res, rec) {
			recs = append(recs, rec)
		}
	}
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Namespace() != recs[j].Namespace() {
			return recs[i].Namespace() < recs[j].Namespace()
		}
		return recs[i].Name() < recs[j].Name()
	})
	p, err := newRecordPrinter(res, popts, out)
	if err != nil {
		return err
	}
	if err := o.printFound(res, p, recs, out); err != nil || !o.watch {
		return err
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
					if o.wants(res, rec) {
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
			if !o.wants(res, rec) {
				continue
			}
			if err := p.one(rec); err != nil {
				return err
			}
			if err := p.flush(); err != nil {
				return err
			}
		}
	}
}

// printFound prints what get found, first of all: the records, in order,
// or that there are none; then, as kubectl does after the objects it found,
// an error for each name that found nothing.
func (o *getOptions) printFound(res *resource, p *recordPrinter, recs []record, out io.Writer) error {
	recs, notFound := o.found(res, recs)
	if len(recs) == 0 && notFound != nil {
		return notFound
	}
	if len(recs) == 0 && !o.watch && p.opts.format.kind == "table" {
		noneFound(out, res, o)
		return nil
	}
	if err := p.list(recs, len(o.names) == 1); err != nil {
		return err
	}
	return notFound
}

// noneFound says, as kubectl does, that a table would be empty.
func noneFound(out io.Writer, res *resource, o *getOptions) {
	where := ""
	if res.namespaced && !o.allNamespaces {
		where = " in namespace " + o.namespace
	}
	fmt.Fprintf(out, "No %s found%s.\n", res.names[0], where)
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
func runGetList(ctx context.Context, g *globals, res *resource, o *getOptions, popts printOptions) error {
	p, err := newRecordPrinter(res, popts, g.stdout)
	if err != nil {
		return err
	}
	for first := true; ; first = false {
		recs, err := res.list(ctx, g)
		if err != nil {
			return err
		}
		var keep []record
		for _, r := range recs {
			if o.wants(res, r) {
				keep = append(keep, r)
			}
		}
		if first {
			if err := o.printFound(res, p, keep, g.stdout); err != nil || !o.watch {
				return err
			}
		} else {
			// The printer leaves out what did not change.
			for _, r := range keep {
				if err := p.one(r); err != nil {
					return err
				}
			}
			if err := p.flush(); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}
