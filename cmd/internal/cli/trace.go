package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func newTraceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trace pod NAME",
		Short: "Print a pod's trace as a waterfall: which service did what, when, for how long",
		Long: `trace pod asks the running podvisor up for the spans it recorded of the pod's trace (the one
started by its pod.requested, whose traceparent the pod record keeps) and prints them as a terminal
waterfall: service, span, offset from the start of the trace, duration and a bar.

A pod's flow is not always one trace: an event published outside any handler (a retry of an
unschedulable pod, a relocation finishing in the background, a migration requested by a client that
sends no trace context) starts a trace of its own, which only links to the pod's. So trace pod also
shows every trace, begun since the pod's admission, in which a span handled an event about the pod;
--flow-only keeps to the one trace the record names. The header says how many traces were joined.

Spans come from the in-memory recorder of podvisor up (services run by podvisor serve export theirs
to the OTLP endpoint of OTEL_EXPORTER_OTLP_ENDPOINT instead; look at those in your trace backend).`,
	}
	cmd.AddCommand(newTracePodCmd(g))
	return cmd
}

func newTracePodCmd(g *globals) *cobra.Command {
	var (
		namespace, output string
		flowOnly          bool
		width             int
	)
	cmd := &cobra.Command{
		Use:               "pod NAME",
		Short:             "Print the trace of one pod",
		ValidArgsFunction: completeName(g, "pods"),
		Args:              cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError(`-o %q: want table or json`, output)
			}
			if width == 0 {
				width = waterfallWidth(g.stdout)
			}
			if width < 60 {
				return usageError("--width %d: want at least 60 columns", width)
			}
			return g.withBus(cmd.Context(), func(ctx context.Context, b *bus.Bus) error {
				key := events.PodKey(namespace, args[0])
				spans, traceID, err := podTrace(ctx, b, namespace, args[0], flowOnly)
				if err != nil {
					return err
				}
				if output == "json" {
					return writeTraceJSON(g.stdout, key, traceID, spans)
				}
				renderWaterfall(g.stdout, key, traceID, spans, width)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", events.DefaultNamespace, "namespace of the pod")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&flowOnly, "flow-only", false, "show only the trace the pod record names, not the traces linked to it")
	cmd.Flags().IntVar(&width, "width", 0, "columns to draw in (default: $COLUMNS, else 120)")
	return cmd
}

// podTrace finds the pod's trace id in its record and asks up for the spans
// of that trace and, unless flowOnly, of the traces that handled events about
// the pod since its admission. A record without a traceparent (a request
// published by a tool that sends no trace context) falls back to the latter.
func podTrace(ctx context.Context, b *bus.Bus, namespace, name string, flowOnly bool) ([]allinone.TraceSpan, string, error) {
	key := events.PodKey(namespace, name)
	kv, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, "", err
	}
	entry, err := kv.Get(ctx, events.PodRecordKey(namespace, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, "", fmt.Errorf("pod %q not found (podvisor get pods -A lists them)", key)
	}
	if err != nil {
		return nil, "", fmt.Errorf("pod %s: %w", key, err)
	}
	var rec events.PodRecord
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		return nil, "", fmt.Errorf("pod %s: record: %w", key, err)
	}
	q := allinone.TraceQuery{}
	if rec.TraceParent != "" {
		if q.TraceID, err = allinone.TraceIDFromTraceparent(rec.TraceParent); err != nil {
			return nil, "", fmt.Errorf("pod %s: %w", key, err)
		}
	}
	if !flowOnly || q.TraceID == "" {
		q.Key = key
		// The request is published just before admission.
		q.Since = rec.CreatedAt.Add(-time.Second)
	}
	data, _ := json.Marshal(q)
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := b.Request(qctx, allinone.SubjectQueryTraces, data)
	if err != nil {
		if strings.Contains(err.Error(), "nobody serves") {
			return nil, "", fmt.Errorf("no podvisor up answers trace queries on %s: traces are kept by podvisor up's in-process services (services run by podvisor serve export to OTEL_EXPORTER_OTLP_ENDPOINT): %w", allinone.SubjectQueryTraces, err)
		}
		return nil, "", err
	}
	var reply allinone.TraceReply
	if err := json.Unmarshal(resp, &reply); err != nil {
		return nil, "", fmt.Errorf("trace reply: %w", err)
	}
	if len(reply.Spans) == 0 {
		if reply.Recorded == 0 {
			return nil, "", fmt.Errorf("pod %s: podvisor up has recorded no spans (tracing off, or up restarted since the pod was requested)", key)
		}
		return nil, "", fmt.Errorf("pod %s: none of the %d spans podvisor up holds belong to its trace %s (the recorder keeps the most recent spans; up may have restarted since)", key, reply.Recorded, dash(q.TraceID))
	}
	attributeServices(reply.Spans)
	return reply.Spans, q.TraceID, nil
}

// attributeServices names the service of every span. Spans of the
// in-process services share one tracer provider, so the resource's
// service.name says "podvisor" for all of them: a span's own podvisor.service
// attribute wins, then the bus's consumer span name ("<service> <ce-type>"),
// then a publish span's event source, then the parent's service (a vSphere
// call inside a handler).
func attributeServices(spans []allinone.TraceSpan) {
	known := runner.Names()
	byID := make(map[string]*allinone.TraceSpan, len(spans))
	for i := range spans {
		byID[spans[i].SpanID] = &spans[i]
	}
	resolved := map[string]string{}
	var resolve func(sp *allinone.TraceSpan, depth int) string
	resolve = func(sp *allinone.TraceSpan, depth int) string {
		if s, ok := resolved[sp.SpanID]; ok {
			return s
		}
		svc := sp.Attrs["podvisor.service"]
		if svc == "" {
			if first, _, ok := strings.Cut(sp.Name, " "); ok && slices.Contains(known, first) {
				svc = first
			}
		}
		if src, ok := strings.CutPrefix(sp.Attrs["ce.source"], "podvisor/"); svc == "" && ok && strings.HasPrefix(sp.Name, "publish ") {
			// A publish outside any handler starts a trace of its own; the
			// event's source names who sent it (podvisor/cli included).
			svc = src
		}
		if svc == "" && depth < 64 {
			if p, ok := byID[sp.ParentID]; ok {
				svc = resolve(p, depth+1)
			}
		}
		if svc == "" {
			svc = sp.Service
		}
		if svc == "" {
			svc = "?"
		}
		resolved[sp.SpanID] = svc
		return svc
	}
	for i := range spans {
		spans[i].Service = resolve(&spans[i], 0)
	}
}

// waterfallRow is one printed line.
type waterfallRow struct {
	span   *allinone.TraceSpan
	depth  int
	offset time.Duration
}

// waterfallRows orders spans as a trace UI does: each child under its
// parent, siblings by start time; spans whose parent was not recorded (the
// client's publish, a trace root) start a tree of their own.
func waterfallRows(spans []allinone.TraceSpan, start time.Time) []waterfallRow {
	present := map[string]bool{}
	for _, sp := range spans {
		present[sp.SpanID] = true
	}
	children := map[string][]*allinone.TraceSpan{}
	var roots []*allinone.TraceSpan
	for i := range spans {
		sp := &spans[i]
		if sp.ParentID != "" && present[sp.ParentID] && sp.ParentID != sp.SpanID {
			children[sp.ParentID] = append(children[sp.ParentID], sp)
		} else {
			roots = append(roots, sp)
		}
	}
	var rows []waterfallRow
	seen := map[string]bool{}
	var walk func(sp *allinone.TraceSpan, depth int)
	walk = func(sp *allinone.TraceSpan, depth int) {
		if seen[sp.SpanID] {
			return
		}
		seen[sp.SpanID] = true
		rows = append(rows, waterfallRow{span: sp, depth: depth, offset: sp.Start.Sub(start)})
		kids := children[sp.SpanID]
		slices.SortStableFunc(kids, func(a, b *allinone.TraceSpan) int { return a.Start.Compare(b.Start) })
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	slices.SortStableFunc(roots, func(a, b *allinone.TraceSpan) int { return a.Start.Compare(b.Start) })
	for _, r := range roots {
		walk(r, 0)
	}
	return rows
}

// traceBounds is the earliest start and latest end of the spans.
func traceBounds(spans []allinone.TraceSpan) (time.Time, time.Time) {
	start, end := spans[0].Start, spans[0].End
	for _, sp := range spans {
		if sp.Start.Before(start) {
			start = sp.Start
		}
		if sp.End.After(end) {
			end = sp.End
		}
	}
	return start, end
}

// renderWaterfall prints the header, then one line per span: service, span
// name (indented under its parent), offset, duration and a bar on a time
// axis scaled to the width left over.
func renderWaterfall(w io.Writer, key, traceID string, spans []allinone.TraceSpan, width int) {
	start, end := traceBounds(spans)
	total := end.Sub(start)
	traces := map[string]bool{}
	services := map[string]bool{}
	for _, sp := range spans {
		traces[sp.TraceID] = true
		services[sp.Service] = true
	}
	svcNames := make([]string, 0, len(services))
	for s := range services {
		svcNames = append(svcNames, s)
	}
	slices.Sort(svcNames)
	fmt.Fprintf(w, "pod %s  trace %s  %d spans in %d trace(s)  %s\n", key, dash(traceID), len(spans), len(traces), fmtDur(total))
	fmt.Fprintf(w, "services: %s\n\n", strings.Join(svcNames, ", "))

	// TR numbers the traces: 1 is the one the record names, the others are
	// flows linked to it, in order of their first span.
	trIndex := map[string]int{}
	if traceID != "" {
		trIndex[traceID] = 1
	}
	rows := waterfallRows(spans, start)
	for _, r := range rows {
		if _, ok := trIndex[r.span.TraceID]; !ok {
			trIndex[r.span.TraceID] = len(trIndex) + 1
		}
	}
	svcW, nameW := len("SERVICE"), len("SPAN")
	for _, r := range rows {
		svcW = max(svcW, len(r.span.Service))
		nameW = max(nameW, 2*r.depth+len(spanLabel(r.span.Name)))
	}
	const offW, durW = 10, 10
	// The bar gets what the text columns leave, at least 20 columns; a long
	// span name is cut rather than the bar squeezed away.
	const fixed = 4 + 2*4 + 2 // TR column, four gaps, the bar's edges
	nameW = min(nameW, max(20, width-svcW-offW-durW-fixed-20))
	barW := max(20, width-svcW-nameW-offW-durW-fixed)
	// Each trace has its own time axis (offsets from its own first span):
	// a flow begun minutes later, such as a re-apply or a migration, does
	// not squash the bars of the first into one column.
	order := make([]string, len(trIndex))
	for id, n := range trIndex {
		order[n-1] = id
	}
	single := len(order) == 1
	axis := "each trace on its own time axis"
	if single {
		_, end := traceBounds(spans)
		axis = "0 → " + fmtDur(end.Sub(start))
	}
	fmt.Fprintf(w, "%-4s%-*s  %-*s  %*s  %*s  %s\n", "TR", svcW, "SERVICE", nameW, "SPAN", offW, "OFFSET", durW, "DURATION", "|"+centre(axis, barW)+"|")
	for _, id := range order {
		var own []allinone.TraceSpan
		for _, sp := range spans {
			if sp.TraceID == id {
				own = append(own, sp)
			}
		}
		tStart, tEnd := traceBounds(own)
		tTotal := tEnd.Sub(tStart)
		if !single {
			fmt.Fprintf(w, "%-4d%-*s  %-*s  %*s  %*s  %s\n", trIndex[id], svcW, "trace", nameW, id, offW, tStart.Local().Format("15:04:05"), durW, fmtDur(tTotal), "|"+centre("0 → "+fmtDur(tTotal), barW)+"|")
		}
		for _, r := range waterfallRows(own, tStart) {
			name := strings.Repeat("  ", r.depth) + spanLabel(r.span.Name)
			if len(name) > nameW {
				name = name[:nameW-1] + "…"
			}
			dur := r.span.End.Sub(r.span.Start)
			mark := ""
			if r.span.Status == "Error" {
				mark = " !"
			}
			fmt.Fprintf(w, "%-4d%-*s  %-*s  %*s  %*s  |%s|%s\n", trIndex[r.span.TraceID], svcW, r.span.Service, nameW, name, offW, fmtDur(r.offset), durW, fmtDur(dur), bar(r.offset, dur, tTotal, barW), mark)
		}
	}
}

// spanLabel shortens CloudEvents types in span names
// ("io.podvisor.pod.accepted.v1" → "pod.accepted").
func spanLabel(n string) string {
	fields := strings.Fields(n)
	for i, f := range fields {
		if strings.HasPrefix(f, "io.podvisor.") {
			f = strings.TrimPrefix(f, "io.podvisor.")
			if j := strings.LastIndex(f, ".v"); j > 0 {
				if _, err := strconv.Atoi(f[j+2:]); err == nil {
					f = f[:j]
				}
			}
			fields[i] = f
		}
	}
	return strings.Join(fields, " ")
}

// bar draws [offset, offset+dur] on a scale of total in width cells; a span
// too short for one cell still shows as one.
func bar(offset, dur, total time.Duration, width int) string {
	if total <= 0 {
		total = 1
	}
	from := int(float64(offset) / float64(total) * float64(width))
	to := int(float64(offset+dur) / float64(total) * float64(width))
	from = min(max(from, 0), width-1)
	to = min(max(to, from+1), width)
	return strings.Repeat(" ", from) + strings.Repeat("█", to-from) + strings.Repeat(" ", width-to)
}

func centre(s string, width int) string {
	n := len([]rune(s))
	if n >= width {
		return string([]rune(s)[:width])
	}
	left := (width - n) / 2
	return strings.Repeat(" ", left) + s + strings.Repeat(" ", width-n-left)
}

// fmtDur prints milliseconds with a precision that suits the size.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 10_000:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.2fs", ms/1000)
	}
}

// waterfallWidth is the terminal's width, else $COLUMNS, else 120.
func waterfallWidth(out io.Writer) int {
	if n := terminalWidth(out); n > 0 {
		return max(n, 60)
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return max(n, 60)
	}
	return 120
}

// traceJSON is what -o json prints: the spans in waterfall order with
// offsets, so a script need not redo the arithmetic.
type traceJSON struct {
	Pod        string          `json:"pod"`
	TraceID    string          `json:"traceId,omitempty"`
	Services   []string        `json:"services"`
	DurationMS float64         `json:"durationMs"`
	Spans      []traceSpanJSON `json:"spans"`
}

type traceSpanJSON struct {
	TraceID    string            `json:"traceId"`
	SpanID     string            `json:"spanId"`
	ParentID   string            `json:"parentId,omitempty"`
	Depth      int               `json:"depth"`
	Service    string            `json:"service"`
	Name       string            `json:"name"`
	OffsetMS   float64           `json:"offsetMs"`
	DurationMS float64           `json:"durationMs"`
	Status     string            `json:"status,omitempty"`
	Attrs      map[string]string `json:"attrs,omitempty"`
}

func writeTraceJSON(w io.Writer, key, traceID string, spans []allinone.TraceSpan) error {
	start, end := traceBounds(spans)
	out := traceJSON{Pod: key, TraceID: traceID, DurationMS: ms(end.Sub(start))}
	services := map[string]bool{}
	for _, r := range waterfallRows(spans, start) {
		if !services[r.span.Service] {
			services[r.span.Service] = true
			out.Services = append(out.Services, r.span.Service)
		}
		out.Spans = append(out.Spans, traceSpanJSON{
			TraceID: r.span.TraceID, SpanID: r.span.SpanID, ParentID: r.span.ParentID, Depth: r.depth,
			Service: r.span.Service, Name: r.span.Name, OffsetMS: ms(r.offset), DurationMS: ms(r.span.End.Sub(r.span.Start)),
			Status: r.span.Status, Attrs: r.span.Attrs,
		})
	}
	slices.Sort(out.Services)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
