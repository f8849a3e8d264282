package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/shared/bus"
)

// CLISource is the CloudEvent source of events the CLI publishes.
const CLISource = "podvisor/cli"

// connect dials NATS for one CLI invocation.
func (g *globals) connect(ctx context.Context) (*bus.Bus, error) {
	url, err := g.endpoint(g.natsURL, "PODVISOR_NATS_URL")
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, err := bus.Connect(cctx, url, nats.Name("podvisor-cli"))
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s (is `podvisor up` running?): %w", url, err)
	}
	return b, nil
}
