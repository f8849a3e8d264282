package allinone

import (
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/redact"
)

// The status page is an operator's view of the running system, read-only:
// hosts and their allocation, pods and where they run, networks, image
// chains, migrations, a chart of pods per phase and a live event feed. The
// page is static (web/); it reads GET /api/state once and then follows
// /api/stream, a server-sent-event stream of state snapshots and CloudEvents.
// Everything it shows is inserted as text, never as markup. Each pod links to
// its trace waterfall (/trace/<ns>/<name>, from the in-memory span recorder)
// and its log lines (/logs/<ns>/<name>, from the process's recent records).
// /metrics serves the Prometheus exposition of every service in the process.

//go:embed web
var webFiles embed.FS

func (s *System) startUI(ctx context.Context) error {
	ln, err := listenPreferred(s.cfg.Host, s.cfg.UIPort)
	if err != nil {
		return fmt.Errorf("up: status page: %w", err)
	}
	uiTLS, err := s.ca.ServerTLS("status", pki.Hosts(s.cfg.Host)...)
	if err != nil {
		ln.Close()
		return fmt.Errorf("up: status page: %w", err)
	}
	ln = tls.NewListener(ln, uiTLS)
	b, err := s.Dial(ctx, "status")
	if err != nil {
		ln.Close()
		return fmt.Errorf("up: status page: %w", err)
	}
	s.onClose(b.Close)
	view := newLiveView()
	vctx, stopView := context.WithCancel(context.WithoutCancel(ctx))
	s.onClose(stopView)
	if err := view.run(vctx, b, s.Endpoints.RedisURL, s.redisCA()); err != nil {
		ln.Close()
		return fmt.Errorf("up: status page: %w", err)
	}
	static, _ := fs.Sub(webFiles, "web")
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", http.FileServerFS(static))
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, _ *http.Request) {
		d, _ := view.snapshot()
		d.NATS, d.Registry = redact.URL(s.Endpoints.NATSURL), s.Endpoints.Registry
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(d)
	})
	mux.HandleFunc("GET /api/stream", func(w http.ResponseWriter, r *http.Request) {
		s.streamView(w, r, view)
	})
	mux.HandleFunc("GET /trace/{ns}/{name}", s.tracePage)
	mux.HandleFunc("GET /logs/{ns}/{name}", s.logsPage)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	if s.cfg.Metrics != nil {
		mux.Handle("GET /metrics", s.cfg.Metrics)
	}
	srv := &http.Server{Handler: securityHeaders(mux), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	s.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	s.Endpoints.UIURL = "https://" + ln.Addr().String()
	return nil
}

// securityHeaders keeps the page's own scripts the only ones that run.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// streamView sends a "state" event whenever the view changed (at most once
// a second) and a "feed" event per CloudEvent.
func (s *System) streamView(w http.ResponseWriter, r *http.Request, view *liveView) {
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
	backlog, feed, unsubscribe := view.subscribe()
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
		if d, version := view.snapshot(); version != sent {
			d.NATS, d.Registry = redact.URL(s.Endpoints.NATSURL), s.Endpoints.Registry
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
func (s *System) tracePage(w http.ResponseWriter, r *http.Request) {
	key := events.PodKey(r.PathValue("ns"), r.PathValue("name"))
	data := map[string]any{"Key": key, "Namespace": r.PathValue("ns"), "Name": r.PathValue("name")}
	if s.cfg.Recorder == nil {
		data["Missing"] = "this process records no spans"
	} else {
		q, _ := json.Marshal(TraceQuery{Key: key})
		raw, err := answerTraceQuery(s.cfg.Recorder, q)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var reply TraceReply
		_ = json.Unmarshal(raw, &reply)
		data["Traces"] = waterfalls(reply.Spans)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pageTemplates.ExecuteTemplate(w, "trace.tmpl", data)
}

// waterfalls groups spans by trace, oldest trace first; each trace gets its
// own time axis, so a re-apply minutes later does not squash the first.
func waterfalls(spans []TraceSpan) []waterfall {
	byTrace := map[string][]TraceSpan{}
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
func (s *System) logsPage(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("ns"), r.PathValue("name")
	var lines []LogLine
	if s.logs != nil {
		lines = s.logs.find(events.PodKey(ns, name), events.PodRecordKey(ns, name))
	}
	type row struct {
		Time, Level, Message, Attrs string
	}
	rows := make([]row, 0, len(lines))
	for _, l := range lines {
		var attrs []string
		for _, a := range l.Attrs {
			attrs = append(attrs, a.String())
		}
		rows = append(rows, row{l.Time.Format("15:04:05.000"), l.Level, l.Message, strings.Join(attrs, " ")})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	pageTemplates.ExecuteTemplate(w, "logs.tmpl", map[string]any{"Key": events.PodKey(ns, name), "Namespace": ns, "Name": name, "Lines": rows})
}
