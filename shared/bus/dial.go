package bus

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/shared/config"
)

// ConnConfig says how to reach NATS and as whom: what a service's or the
// CLI's configuration fills (from PODVISOR_NATS_URL, PODVISOR_NATS_CREDS,
// PODVISOR_NATS_CA, or a CLI context) and Dial turns into a connection.
type ConnConfig struct {
	// URL is one or more comma-separated nats:// (or tls://) URLs.
	URL string
	// CredsFile is the identity's creds file (JWT and seed); empty for a
	// server without authentication.
	CredsFile string
	// CAFile holds the CA certificates that sign the server's certificate;
	// empty trusts the system's roots (TLS is still used when the server
	// requires it).
	CAFile string
	// Name is the connection name the server lists (podvisor-<service>).
	Name string
}

// ConnConfigFromEnv reads PODVISOR_NATS_URL, PODVISOR_NATS_CREDS and
// PODVISOR_NATS_CA from the environment.
func ConnConfigFromEnv(name string) ConnConfig { return ConnConfigFrom(config.Env(), name) }

// ConnConfigFrom reads PODVISOR_NATS_URL, PODVISOR_NATS_CREDS and
// PODVISOR_NATS_CA from a settings source (the environment, an env file).
func ConnConfigFrom(src config.Source, name string) ConnConfig {
	c := ConnConfig{Name: name}
	c.URL, _ = src("PODVISOR_NATS_URL")
	c.CredsFile, _ = src("PODVISOR_NATS_CREDS")
	c.CAFile, _ = src("PODVISOR_NATS_CA")
	return c
}

// Validate checks that the files it names can be read, naming the setting.
func (c ConnConfig) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("NATS URL is empty (PODVISOR_NATS_URL)"))
	}
	for _, f := range []struct{ what, path string }{{"creds file (PODVISOR_NATS_CREDS)", c.CredsFile}, {"CA file (PODVISOR_NATS_CA)", c.CAFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("NATS %s: %w", f.what, err))
		}
	}
	return errors.Join(errs...)
}

// Options are the nats.go options of the configuration.
func (c ConnConfig) Options() []nats.Option {
	var opts []nats.Option
	if c.Name != "" {
		opts = append(opts, nats.Name(c.Name))
	}
	if c.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.CAFile != "" {
		opts = append(opts, nats.RootCAs(c.CAFile))
	}
	return opts
}

// Dial connects as the configuration says: the one way services, the CLI
// and `podvisor up` reach NATS. Extra options come last and win.
func Dial(ctx context.Context, c ConnConfig, extra ...nats.Option) (*Bus, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	return Connect(ctx, c.URL, append(c.Options(), extra...)...)
}
