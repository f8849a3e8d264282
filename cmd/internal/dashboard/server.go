package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
)

//go:embed web
var webFiles embed.FS

// Options are what a Handler serves besides the View.
type Options struct {
	// View is the read model the page shows; it must be running.
	View *View
	// NATS and Registry are shown in the page's header (NATS without
	// credentials: the caller redacts it).
	NATS, Registry string
	// Traces answers the trace page; nil says this process has none.
	Traces TraceSource
	// Logs answers the logs page; nil says this process keeps none.
	Logs LogSource
	// Metrics, when set, is served on /metrics.
	Metrics http.Handler
}

// Span is one finished span of a trace waterfall.
type Span struct {
	TraceID, SpanID, ParentID string
	Name, Service, Status     string
	Start, End                time.Time
}

// TraceSource returns the spans of every trace that touched the pod key
// (<ns>/<name>), ordered by start. ErrNoTraces says nobody records them
// (the page says so, not an error).
type TraceSource func(ctx context.Context, key string) ([]Span, error)

// ErrNoTraces is what a TraceSource returns when no recorder holds spans.
var ErrNoTraces = errors.New("no trace recorder answers here")

// LogLine is one log record about a pod.
type LogLine struct {
	Time    time.Time
	Level   string
	Message string
	Attrs   []slog.Attr
}

// LogSource returns the recent log lines about the pod namespace/name.
type LogSource func(namespace, name string) []LogLine

// Handler serves the page, its API, the trace and log pages, /healthz and
// (when set) /metrics. It only reads: every route is a GET.
func Handler(o Options) http.Handler {
	static, _ := fs.Sub(webFiles, "web")
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", http.FileServerFS(static))
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, _ *http.Request) {
		d, _ := o.snapshot()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d)
	})
	mux.HandleFunc("GET /api/stream", o.stream)
	mux.HandleFunc("GET /trace/{ns}/{name}", o.tracePage)
	mux.HandleFunc("GET /logs/{ns}/{name}", o.logsPage)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	return securityHeaders(mux)
}

func (o Options) snapshot() (Dashboard, uint64) {
	d, version := o.View.Snapshot()
	d.NATS, d.Registry = o.NATS, o.Registry
	return d, version
}

// securityHeaders keeps the page's own scripts the only ones that run.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// stream sends a "state" event whenever the view changed (at most once a
// second) and a "feed" event per CloudEvent.
func (o Options) stream(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	send := func(kind string, v any) bool {
		data, err := json.Marshal(v)
		if err != nil {
			return false
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", kind, data); err != nil {
			return false
		}
		flusher.Flush()
		return true
	}
	backlog, feed, unsubscribe := o.View.subscribe()
	defer unsubscribe()
	for _, e := range backlog {
		if !send("feed", e) {
			return
		}
	}
	var sent uint64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if d, version := o.snapshot(); version != sent {
			if !send("state", d) {
				return
			}
			sent = version
		}
		select {
		case <-r.Context().Done():
			return
		case e := <-feed:
			if !send("feed", e) {
				return
			}
		case <-tick.C:
		}
	}
}

var pageTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"ms": func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) },
}).ParseFS(webFiles, "web/*.tmpl"))

// waterfallSpan is one bar of a trace waterfall, placed on its own trace's
// time axis (left and width in percent of the trace's duration).
type waterfallSpan struct {
	Name, Service, Status string
	Depth                 int
	Left, Width           float64
	Took                  time.Duration
}

type waterfall struct {
	ID    string
	Start time.Time
	Took  time.Duration
	Spans []waterfallSpan
}

// tracePage renders the traces that touched a pod as waterfalls.
func (o Options) tracePage(w http.ResponseWriter, r *http.Request) {
	key := events.PodKey(r.PathValue("ns"), r.PathValue("name"))
	data := map[string]any{"Key": key, "Namespace": r.PathValue("ns"), "Name": r.PathValue("name")}
	if o.Traces == nil {
		data["Missing"] = "this process records no spans"
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		spans, err := o.Traces(ctx, key)
		cancel()
		switch {
		case errors.Is(err, ErrNoTraces):
			data["Missing"] = err.Error()
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		default:
			data["Traces"] = waterfalls(spans)
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pageTemplates.ExecuteTemplate(w, "trace.tmpl", data)
}

// waterfalls groups spans by trace, oldest trace first; each trace gets its
// own time axis, so a re-apply minutes later does not squash the first.
func waterfalls(spans []Span) []waterfall {
	byTrace := map[string][]Span{}
	var order []string
	for _, sp := range spans {
		if _, ok := byTrace[sp.TraceID]; !ok {
			order = append(order, sp.TraceID)
		}
		byTrace[sp.TraceID] = append(byTrace[sp.TraceID], sp)
	}
	var out []waterfall
	for _, id := range order {
		ss := byTrace[id]
		sort.SliceStable(ss, func(i, j int) bool { return ss[i].Start.Before(ss[j].Start) })
		start, end := ss[0].Start, ss[0].End
		depth := map[string]int{}
		for _, sp := range ss {
			if sp.End.After(end) {
				end = sp.End
			}
		}
		total := max(end.Sub(start), time.Microsecond)
		wf := waterfall{ID: id, Start: start, Took: end.Sub(start)}
		for _, sp := range ss {
			d := 0
			if p, ok := depth[sp.ParentID]; ok {
				d = p + 1
			}
			depth[sp.SpanID] = d
			wf.Spans = append(wf.Spans, waterfallSpan{
				Name: sp.Name, Service: sp.Service, Status: sp.Status, Depth: d,
				Left:  100 * float64(sp.Start.Sub(start)) / float64(total),
				Width: max(0.3, 100*float64(sp.End.Sub(sp.Start))/float64(total)),
				Took:  sp.End.Sub(sp.Start),
			})
		}
		out = append(out, wf)
	}
	return out
}

// logsPage shows the recent log lines of every service about one pod.
func (o Options) logsPage(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	data := map[string]any{"Key": events.PodKey(ns, name), "Namespace": ns, "Name": name}
	type row struct {
		Time, Level, Message, Attrs string
	}
	rows := []row{}
	if o.Logs == nil {
		data["Missing"] = "this process keeps no log lines: the services log to stderr and OTLP, each line with its trace_id"
	} else {
		for _, l := range o.Logs(ns, name) {
			var attrs []string
			for _, a := range l.Attrs {
				attrs = append(attrs, a.String())
			}
			rows = append(rows, row{l.Time.Format("15:04:05.000"), l.Level, l.Message, strings.Join(attrs, " ")})
		}
	}
	data["Lines"] = rows
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pageTemplates.ExecuteTemplate(w, "logs.tmpl", data)
}
