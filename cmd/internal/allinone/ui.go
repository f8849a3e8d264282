package allinone

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/redact"
)

// The status page is the dashboard (package dashboard) served over TLS from
// the installation's CA, read as the dashboard identity: each pod's trace
// comes from this process's span recorder and its log lines from the
// process's recent records; /metrics serves the Prometheus exposition of
// every service in the process.
func (s *System) startUI(ctx context.Context) error {
	ln, err := listenPreferred(s.cfg.Host, s.ports.want(partUI, s.cfg.UIPort)...)
	if err != nil {
		return fmt.Errorf("up: status page: %w", err)
	}
	s.ports.use(partUI, s.cfg.Host, s.cfg.UIPort, ln.Addr().(*net.TCPAddr).Port)
	uiTLS, err := s.ca.ServerTLS("status", pki.Hosts(s.cfg.Host)...)
	if err != nil {
		ln.Close()
		return fmt.Errorf("up: status page: %w", err)
	}
	ln = tls.NewListener(ln, uiTLS)
	b, err := s.Dial(ctx, bus.IdentityDashboard)
	if err != nil {
		ln.Close()
		return fmt.Errorf("up: status page: %w", err)
	}
	s.onClose(b.Close)
	view := dashboard.NewView()
	vctx, stopView := context.WithCancel(context.WithoutCancel(ctx))
	s.onClose(stopView)
	var images dashboard.ImageLister
	if url, ca := s.Endpoints.RedisURL, s.redisCA(); url != "" {
		images = func(ctx context.Context) ([]events.ImageRecord, error) { return imagemeta.ListImages(ctx, url, ca) }
	}
	if err := view.Run(vctx, b, images); err != nil {
		ln.Close()
		return fmt.Errorf("up: status page: %w", err)
	}
	opts := dashboard.Options{View: view, NATS: redact.URL(s.Endpoints.NATSURL), Registry: s.Endpoints.Registry, Metrics: s.cfg.Metrics}
	if s.cfg.Recorder != nil {
		opts.Traces = RecorderTraces(s.cfg.Recorder)
	}
	if s.logs != nil {
		opts.Logs = func(ns, name string) []dashboard.LogLine {
			return s.logs.find(events.PodKey(ns, name), events.PodRecordKey(ns, name))
		}
	}
	srv := &http.Server{Handler: dashboard.Handler(opts), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	s.onClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	s.Endpoints.UIURL = "https://" + ln.Addr().String()
	return nil
}
