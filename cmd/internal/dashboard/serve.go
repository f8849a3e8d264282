package dashboard

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
)

// ClientOrganization is the certificate Organization a dashboard user's
// client certificate carries (`podvisor identity dashboard-user`). The
// installation's CA also signs the NATS and Redis server certificates; the
// dashboard admits only certificates made for its users.
const ClientOrganization = "podvisor-dashboard"

// Config is how `podvisor serve dashboard` serves the page: always over
// TLS, and with mutual TLS unless it listens on loopback only.
type Config struct {
	// Addr is where the page listens (PODVISOR_DASHBOARD_ADDR, default
	// :8443).
	Addr string
	// CertFile and KeyFile are the server's certificate and key
	// (PODVISOR_DASHBOARD_TLS_CERT, PODVISOR_DASHBOARD_TLS_KEY; required).
	CertFile, KeyFile string
	// ClientCAFile verifies the users' client certificates
	// (PODVISOR_DASHBOARD_CLIENT_CA). Required unless Addr is a loopback
	// address: a page reachable from elsewhere is never open to anyone.
	ClientCAFile string
	// Registry is shown in the page's header (PODVISOR_REGISTRY).
	Registry string
}

// ConfigFrom reads the Config from settings and validates it.
func ConfigFrom(src config.Source) (Config, error) {
	return config.Load(src, Config{Addr: ":8443"}, func(r *config.Reader, c *Config) {
		r.String("PODVISOR_DASHBOARD_ADDR", &c.Addr)
		r.String("PODVISOR_DASHBOARD_TLS_CERT", &c.CertFile)
		r.String("PODVISOR_DASHBOARD_TLS_KEY", &c.KeyFile)
		r.String("PODVISOR_DASHBOARD_CLIENT_CA", &c.ClientCAFile)
		r.String("PODVISOR_REGISTRY", &c.Registry)
	})
}

// Validate names every setting that is wrong.
func (c Config) Validate() error {
	var errs []error
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		errs = append(errs, fmt.Errorf("PODVISOR_DASHBOARD_ADDR %q: want host:port (%v)", c.Addr, err))
	}
	if c.CertFile == "" || c.KeyFile == "" {
		errs = append(errs, errors.New("PODVISOR_DASHBOARD_TLS_CERT and PODVISOR_DASHBOARD_TLS_KEY: required (the dashboard serves only TLS)"))
	}
	if c.ClientCAFile == "" && err == nil && !loopback(host) {
		errs = append(errs, fmt.Errorf("PODVISOR_DASHBOARD_CLIENT_CA: required when PODVISOR_DASHBOARD_ADDR (%s) is not loopback: users present client certificates (podvisor identity dashboard-user)", c.Addr))
	}
	return errors.Join(errs...)
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// TLS is the server's TLS configuration: its certificate, and with a
// ClientCAFile a verified client certificate of ClientOrganization from
// every connection.
func (c Config) TLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("dashboard TLS certificate: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCAFile == "" {
		return conf, nil
	}
	pem, err := os.ReadFile(c.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("PODVISOR_DASHBOARD_CLIENT_CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("PODVISOR_DASHBOARD_CLIENT_CA %s: no PEM certificate", c.ClientCAFile)
	}
	conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !slices.Contains(cs.PeerCertificates[0].Subject.Organization, ClientOrganization) {
			return fmt.Errorf("dashboard: the client certificate is not a dashboard user's (organization %s)", ClientOrganization)
		}
		return nil
	}
	return conf, nil
}

// Serve runs the dashboard of the bus b (connected as the dashboard
// identity) until ctx ends. ready, when set, receives the address it
// listens on.
func Serve(ctx context.Context, c Config, b *bus.Bus, images ImageLister, logger *slog.Logger, ready func(addr string)) error {
	tlsConf, err := c.TLS()
	if err != nil {
		return err
	}
	view := NewView()
	if err := view.Run(ctx, b, images); err != nil {
		return fmt.Errorf("dashboard view (as the %s identity?): %w", bus.IdentityDashboard, err)
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("dashboard on %s: %w", c.Addr, err)
	}
	srv := &http.Server{
		Handler:           Handler(Options{View: view, NATS: b.Conn().ConnectedUrlRedacted(), Registry: c.Registry}),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	logger.Info("dashboard", "addr", ln.Addr().String(), "mutual_tls", c.ClientCAFile != "")
	if ready != nil {
		ready(ln.Addr().String())
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("dashboard: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	}
}
