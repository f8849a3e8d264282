package allinone

import (
	"crypto/tls"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/redact"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/shared/bus"
)

// The status page is deliberately small: a server-rendered summary of the
// read models (KV buckets) that refreshes itself, for a person watching a
// demo. Everything on it is also available from `podvisor get`.
var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>podvisor</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}</style>
</head><body>
<h1>podvisor</h1>
<p>NATS {{.NATS}} · Registry {{.Registry}} · updated {{.Now}}</p>
<h2>Pods by phase</h2>
<table id="phases"><tr><th>phase</th><th>pods</th></tr>{{range .Phases}}<tr><td>{{.Name}}</td><td>{{.Count}}</td></tr>{{else}}<tr><td colspan=2>no pods</td></tr>{{end}}</table>
<h2>Records</h2>
<table id="buckets"><tr><th>bucket</th><th>keys</th></tr>{{range .Buckets}}<tr><td>{{.Name}}</td><td>{{.Count}}</td></tr>{{end}}</table>
</body></html>
`))

type countRow struct {
	Name  string
	Count int
}

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
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		data, err := s.statusData(r.Context(), b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		statusPage.Execute(w, data)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	s.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	s.Endpoints.UIURL = "https://" + ln.Addr().String()
	return nil
}

func (s *System) statusData(ctx context.Context, b *bus.Bus) (map[string]any, error) {
	buckets := []countRow{}
	phases := map[string]int{}
	for _, name := range bus.Buckets() {
		kv, err := b.KV(ctx, name)
		if err != nil {
			return nil, err
		}
		lister, err := kv.ListKeys(ctx)
		if err != nil {
			return nil, err
		}
		n := 0
		for key := range lister.Keys() {
			n++
			if name != "pods" {
				continue
			}
			e, err := kv.Get(ctx, key)
			if err != nil {
				if errors.Is(err, jetstream.ErrKeyNotFound) {
					continue
				}
				return nil, err
			}
			var rec struct {
				Phase string `json:"phase"`
			}
			if json.Unmarshal(e.Value(), &rec) == nil {
				phases[rec.Phase]++
			}
		}
		buckets = append(buckets, countRow{name, n})
	}
	phaseRows := make([]countRow, 0, len(phases))
	for p, n := range phases {
		phaseRows = append(phaseRows, countRow{p, n})
	}
	sort.Slice(phaseRows, func(i, j int) bool { return phaseRows[i].Name < phaseRows[j].Name })
	return map[string]any{
		"NATS": redact.URL(s.Endpoints.NATSURL), "Registry": s.Endpoints.Registry,
		"Now": time.Now().Format(time.TimeOnly), "Phases": phaseRows, "Buckets": buckets,
	}, nil
}
