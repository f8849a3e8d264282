package cli

import (
	"context"
	"os"
	"testing"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/shared/simtest"
)

// guestsUp starts what `podvisor up --guests on` starts, in process, for a
// test that drives it through the CLI: every service, simulated guests that
// run the real pod VM agent, and the env file the CLI reads. cfg sets the
// datacenter's size and whatever else the test needs; guestsUp fills in the
// state dir, the services, the guests and the agent (one cluster and seed 1
// unless cfg says otherwise). It needs root and the guests' tools (runc,
// mkfs.erofs, mkfs.ext4, busybox, plus tools): without them the test skips,
// and fails in CI. It returns the system and its state dir, which is short
// because guest channels are unix sockets below it (t.TempDir's path can
// pass their 108-byte limit).
func guestsUp(t *testing.T, why string, cfg allinone.Config, tools ...string) (*allinone.System, string) {
	t.Helper()
	agent := simtest.GuestAgent(t, why, tools...)
	cfg.Guests, cfg.Agent = allinone.GuestsOn, agent
	return startUp(t, "all", cfg)
}

// startUp starts what `podvisor up --services services` starts, in
// process, in a short temporary state dir, with the env file the CLI
// reads; cfg sets the datacenter and the guests (one cluster and seed 1
// unless it says otherwise). Everything stops at cleanup.
func startUp(t *testing.T, services string, cfg allinone.Config) (*allinone.System, string) {
	t.Helper()
	specs, err := runner.Select(services)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pvup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.StateDir, cfg.Services = dir, specs
	if cfg.Clusters == 0 {
		cfg.Clusters = 1
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	sys, err := allinone.Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); sys.Close() })
	if _, err := sys.WriteEnv(); err != nil {
		t.Fatal(err)
	}
	return sys, dir
}
