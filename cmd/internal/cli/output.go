package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/printers"
)

// outputFormat is a parsed -o value, as kubectl spells them: table (the
// default), wide, json, yaml, name, jsonpath=TEMPLATE, custom-columns=SPEC.
type outputFormat struct {
	kind string
	arg  string
}

const outputHelp = "output format: table, wide, json, yaml, name, jsonpath=TEMPLATE or custom-columns=NAME:.path,..."

func parseOutput(s string) (outputFormat, error) {
	kind, arg, _ := strings.Cut(s, "=")
	switch kind {
	case "", "table":
		return outputFormat{kind: "table"}, nil
	case "wide", "json", "yaml", "name":
		if arg != "" {
			return outputFormat{}, usageError("-o %s takes no argument", kind)
		}
		return outputFormat{kind: kind}, nil
	case "jsonpath", "custom-columns":
		if arg == "" {
			return outputFormat{}, usageError("-o %s needs a value: -o %s=...", kind, kind)
		}
		return outputFormat{kind: kind, arg: arg}, nil
	}
	return outputFormat{}, usageError("-o %q: want table, wide, json, yaml, name, jsonpath=... or custom-columns=...", s)
}

// structured reports whether the format prints objects rather than rows.
func (f outputFormat) structured() bool { return f.kind == "json" || f.kind == "yaml" }

// printOptions are the table flags shared by get and friends.
type printOptions struct {
	format     outputFormat
	showLabels bool
	noHeaders  bool
	// width caps table lines (the terminal's width); 0 for no cap.
	width int
}

// terminalWidth is stdout's width when it is a terminal, else 0.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if width, _, err := term.GetSize(int(f.Fd())); err == nil {
			return width
		}
	}
	return 0
}

// isTerminal reports whether w is a terminal (progress bars only draw there).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// kubeObject turns what a record prints into a runtime.Object for the
// cli-runtime printers: pods are already Kubernetes objects; podvisor's
// records get apiVersion podvisor.io/v1alpha1 and their kind.
func kubeObject(res *resource, rec record) (runtime.Object, error) {
	obj := rec.Object()
	if ro, ok := obj.(runtime.Object); ok && !ro.GetObjectKind().GroupVersionKind().Empty() {
		return ro, nil
	}
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s %s is not a JSON object: %w", res.kind, rec.Name(), err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion("podvisor.io/v1alpha1")
	u.SetKind(res.kind)
	return u, nil
}

// listObject wraps objects in a v1 List, as kubectl prints several.
func listObject(objs []runtime.Object) (*unstructured.Unstructured, error) {
	items := make([]any, 0, len(objs))
	for _, o := range objs {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		items = append(items, m)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "List", "metadata": map[string]any{"resourceVersion": ""}, "items": items,
	}}, nil
}

// objectPrinter prints one object (or a List) in a structured format.
func objectPrinter(f outputFormat) (printers.ResourcePrinter, error) {
	switch f.kind {
	case "json":
		return &printers.JSONPrinter{}, nil
	case "yaml":
		return &printers.YAMLPrinter{}, nil
	case "name":
		return &printers.NamePrinter{}, nil
	case "jsonpath":
		p, err := printers.NewJSONPathPrinter(f.arg)
		if err != nil {
			return nil, usageError("-o jsonpath: %v", err)
		}
		p.AllowMissingKeys(true)
		return p, nil
	}
	return nil, fmt.Errorf("no object printer for -o %s", f.kind)
}

// nameObject is what -o name prints for a record: kind/name, the kind in
// lowercase and qualified by its API group as kubectl does (pod/web,
// host.podvisor.io/esx-1-01).
func nameObject(res *resource, rec record) runtime.Object {
	u := &unstructured.Unstructured{Object: map[string]any{}}
	u.SetAPIVersion("podvisor.io/v1alpha1")
	if res.kind == "Pod" {
		u.SetAPIVersion("v1")
	}
	u.SetKind(res.kind)
	u.SetName(rec.Name())
	return u
}

// customColumns is a parsed custom-columns spec: NAME:.json.path,...
type customColumns struct {
	headers []string
	paths   []*printers.JSONPathPrinter
}

func parseCustomColumns(spec string) (*customColumns, error) {
	cc := &customColumns{}
	for _, col := range strings.Split(spec, ",") {
		name, path, ok := strings.Cut(col, ":")
		if !ok || name == "" || path == "" {
			return nil, usageError("-o custom-columns: %q: want NAME:.json.path", col)
		}
		tmpl := path
		if !strings.HasPrefix(tmpl, "{") {
			tmpl = "{" + tmpl + "}"
		}
		p, err := printers.NewJSONPathPrinter(tmpl)
		if err != nil {
			return nil, usageError("-o custom-columns: column %s: %v", name, err)
		}
		p.AllowMissingKeys(true)
		cc.headers = append(cc.headers, name)
		cc.paths = append(cc.paths, p)
	}
	return cc, nil
}

func (cc *customColumns) row(obj runtime.Object) ([]string, error) {
	cells := make([]string, len(cc.paths))
	for i, p := range cc.paths {
		var b bytes.Buffer
		if err := p.PrintObj(obj, &b); err != nil {
			return nil, err
		}
		cells[i] = b.String()
		if cells[i] == "" {
			cells[i] = "<none>"
		}
	}
	return cells, nil
}

// recordPrinter prints records of one resource in any -o format. Tables
// are aligned over what is printed together first (the header and the
// objects found); in watch mode each change is one more row, padded to those
// columns' widths, or one more object. An object printed as it was printed
// last is not printed again.
type recordPrinter struct {
	res    *resource
	opts   printOptions
	out    io.Writer
	rows   [][]string // table rows waiting for flush
	widths []int      // the columns' widths, set by the first rows flushed
	header bool
	cols   *customColumns
	// last is what each object (namespace/name) printed last, to tell an
	// update that changes nothing printed.
	last map[string]string
}

func newRecordPrinter(res *resource, opts printOptions, out io.Writer) (*recordPrinter, error) {
	p := &recordPrinter{res: res, opts: opts, out: out, last: map[string]string{}}
	if opts.format.kind == "custom-columns" {
		cc, err := parseCustomColumns(opts.format.arg)
		if err != nil {
			return nil, err
		}
		p.cols = cc
	}
	if opts.format.kind == "jsonpath" {
		if _, err := objectPrinter(opts.format); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// list prints what a get found: a single object as itself, several as a
// List (structured formats), or rows.
func (p *recordPrinter) list(recs []record, single bool) error {
	switch p.opts.format.kind {
	case "json", "yaml", "jsonpath":
		objs := make([]runtime.Object, 0, len(recs))
		for _, r := range recs {
			o, err := kubeObject(p.res, r)
			if err != nil {
				return err
			}
			objs = append(objs, o)
		}
		pr, err := objectPrinter(p.opts.format)
		if err != nil {
			return err
		}
		for _, r := range recs {
			p.unchanged(r)
		}
		if single && len(objs) == 1 {
			return pr.PrintObj(objs[0], p.out)
		}
		l, err := listObject(objs)
		if err != nil {
			return err
		}
		return pr.PrintObj(l, p.out)
	}
	for _, r := range recs {
		if err := p.one(r); err != nil {
			return err
		}
	}
	return p.flush()
}

// one prints one record unless it would print as it did last; in table
// formats it waits for flush.
func (p *recordPrinter) one(r record) error {
	if p.unchanged(r) {
		return nil
	}
	switch p.opts.format.kind {
	case "json", "yaml", "jsonpath":
		o, err := kubeObject(p.res, r)
		if err != nil {
			return err
		}
		pr, _ := objectPrinter(p.opts.format)
		if p.opts.format.kind == "jsonpath" {
			defer fmt.Fprintln(p.out)
		}
		return pr.PrintObj(o, p.out)
	case "name":
		pr, _ := objectPrinter(p.opts.format)
		return pr.PrintObj(nameObject(p.res, r), p.out)
	case "custom-columns":
		o, err := kubeObject(p.res, r)
		if err != nil {
			return err
		}
		cells, err := p.cols.row(o)
		if err != nil {
			return err
		}
		p.line(p.cols.headers, cells)
		return nil
	}
	p.line(p.tableRow(r, time.Now()))
	return nil
}

// tableRow is the header and the row of a record in the table formats
// (table, wide), with the columns the flags add.
func (p *recordPrinter) tableRow(r record, now time.Time) (header, cells []string) {
	header, cells = p.res.header, r.Row(now)
	if p.opts.format.kind == "wide" && p.res.wide != nil {
		header = append(append([]string(nil), header...), p.res.wideHeader...)
		cells = append(cells, p.res.wide(r)...)
	}
	if p.res.namespaced {
		header = append([]string{"NAMESPACE"}, header...)
		cells = append([]string{r.Namespace()}, cells...)
	}
	if p.opts.showLabels {
		header = append(append([]string(nil), header...), "LABELS")
		cells = append(cells, labelString(recordLabels(r)))
	}
	return header, cells
}

// unchanged reports whether r would print as its object printed last, and
// remembers it as printed: the same row (its ages aside) in the table
// formats, the same object in the others.
func (p *recordPrinter) unchanged(r record) bool {
	var now string
	switch p.opts.format.kind {
	case "table", "wide":
		_, cells := p.tableRow(r, time.Time{})
		now = strings.Join(cells, "\t")
	default:
		b, err := json.Marshal(r.Object())
		if err != nil {
			return false
		}
		now = string(b)
	}
	key := r.Namespace() + "/" + r.Name()
	before, ok := p.last[key]
	p.last[key] = now
	return ok && before == now
}

func (p *recordPrinter) line(header, cells []string) {
	if !p.header && !p.opts.noHeaders {
		p.rows = append(p.rows, header)
	}
	p.header = true
	p.rows = append(p.rows, cells)
}

// flush writes the rows waiting, aligned, each cut to the terminal's
// width. The first rows flushed set the columns' widths, as a tabwriter
// would; later ones (a watch's) are padded to those widths, a longer cell
// pushing the rest of its own row only, as kubectl does.
func (p *recordPrinter) flush() error {
	if p.widths == nil && len(p.rows) > 0 {
		for _, row := range p.rows {
			for i, c := range row[:max(len(row)-1, 0)] {
				if i == len(p.widths) {
					p.widths = append(p.widths, 0)
				}
				p.widths[i] = max(p.widths[i], utf8.RuneCountInString(c))
			}
		}
	}
	for _, row := range p.rows {
		var b strings.Builder
		for i, c := range row {
			b.WriteString(c)
			if i < len(row)-1 {
				pad := 2
				if i < len(p.widths) {
					pad += max(0, p.widths[i]-utf8.RuneCountInString(c))
				}
				b.WriteString(strings.Repeat(" ", pad))
			}
		}
		l := b.String()
		if w := p.opts.width; w > 1 && utf8.RuneCountInString(l) > w {
			l = string([]rune(l)[:w-1]) + "…"
		}
		if _, err := fmt.Fprintln(p.out, l); err != nil {
			return err
		}
	}
	p.rows = nil
	return nil
}

// deleted reports, while watching, that a record went away.
func (p *recordPrinter) deleted(r record) error {
	delete(p.last, r.Namespace()+"/"+r.Name())
	what := r.Name()
	if r.Namespace() != "" {
		what = r.Namespace() + "/" + r.Name()
	}
	if p.opts.format.structured() {
		b, _ := json.Marshal(map[string]string{"event": "DELETED", "namespace": r.Namespace(), "name": r.Name()})
		_, err := fmt.Fprintln(p.out, string(b))
		return err
	}
	if err := p.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(p.out, "%s %s deleted\n", strings.ToLower(p.res.kind), what)
	return err
}

// labeled is a record whose object carries labels (pods, hosts).
type labeled interface{ Labels() map[string]string }

func recordLabels(r record) map[string]string {
	if l, ok := r.(labeled); ok {
		return l.Labels()
	}
	return nil
}

// labelString renders labels as kubectl's --show-labels does.
func labelString(l map[string]string) string {
	if len(l) == 0 {
		return "<none>"
	}
	return strings.Join(mapLines(l, "="), ",")
}

// mapLines renders a map's entries sorted by key: key, sep, value (on one
// line: a newline in a value shows as \n).
func mapLines(m map[string]string, sep string) []string {
	lines := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		lines = append(lines, k+sep+oneLine(m[k]))
	}
	return lines
}

// parseSelector reads a -l value; empty selects everything.
func parseSelector(s string) (labels.Selector, error) {
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, usageError("-l %q: %v", s, err)
	}
	return sel, nil
}
