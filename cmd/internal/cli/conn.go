package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/redact"
)

// CLISource is the CloudEvent source of events the CLI publishes.
const CLISource = "podvisor/cli"

// natsConn decides where NATS is and as whom to reach it, from one place
// only so that a URL of one installation never meets the creds of another:
// --nats-url or $PODVISOR_NATS_URL (with $PODVISOR_NATS_CREDS and
// $PODVISOR_NATS_CA), else the current context of ~/.podvisor/config, else
// the env file `podvisor up` wrote in the state dir. --nats-creds replaces
// the creds file of the source chosen (the same installation, another
// identity).
func (g *globals) natsConn() (bus.ConnConfig, error) {
	c, err := g.natsSource()
	if g.natsCreds != "" {
		c.CredsFile = g.natsCreds
	}
	return c, err
}

func (g *globals) natsSource() (bus.ConnConfig, error) {
	c := bus.ConnConfig{Name: "podvisor-cli"}
	if url := firstOf(g.natsURL, os.Getenv("PODVISOR_NATS_URL")); url != "" {
		c.URL, c.CredsFile, c.CAFile = url, os.Getenv("PODVISOR_NATS_CREDS"), os.Getenv("PODVISOR_NATS_CA")
		return c, nil
	}
	cfg, err := loadCLIConfig()
	if err != nil {
		return c, err
	}
	if cur, ok, err := cfg.current(); err != nil {
		return c, err
	} else if ok {
		c.URL, c.CredsFile, c.CAFile = cur.NATSURL, cur.NATSCreds, cur.NATSCA
		return c, nil
	}
	file := filepath.Join(g.stateDir, "env")
	vars, err := serve.ReadEnvFile(file)
	if err != nil {
		return c, fmt.Errorf("PODVISOR_NATS_URL is not set, no context is current (podvisor config use-context) and %s cannot be read (start `podvisor up` or pass --nats-url): %w", file, err)
	}
	if vars["PODVISOR_NATS_URL"] == "" {
		return c, fmt.Errorf("PODVISOR_NATS_URL is not set and %s does not define it", file)
	}
	c.URL, c.CredsFile, c.CAFile = vars["PODVISOR_NATS_URL"], vars["PODVISOR_NATS_CREDS"], vars["PODVISOR_NATS_CA"]
	return c, nil
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// connect dials NATS for one CLI invocation.
func (g *globals) connect(ctx context.Context) (*bus.Bus, error) {
	conf, err := g.natsConn()
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := bus.Dial(cctx, conf)
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s (is `podvisor up` running? if it moved to another port, source its env file again): %w", redact.URL(conf.URL), err)
	}
	return b, nil
}

func redactURL(u string) string { return redact.URL(u) }

// withBus connects to the bus, runs fn with it and closes it: the shape of
// every command that reads records or publishes.
func (g *globals) withBus(ctx context.Context, fn func(ctx context.Context, b *bus.Bus) error) error {
	b, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	return fn(ctx, b)
}
