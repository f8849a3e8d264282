package simtest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// startTimeout bounds the construction of a datacenter. 2x8 starts in well
// under a second; the margin is for loaded CI machines and the race detector.
const startTimeout = 30 * time.Second

// Start builds a simulated datacenter for the test and closes it at cleanup.
// The datastore directories go under the test's temp dir unless cfg.Dir is set.
func Start(t testing.TB, cfg sim.Config) *sim.Datacenter {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	d, err := sim.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("simtest: start simulated datacenter: %v", err)
	}
	t.Cleanup(d.Close)
	return d
}

// Fault injects rule into d's vCenter until the test (or subtest) ends,
// when every injected fault is cleared: no test leaves a fault to the next.
func Fault(t testing.TB, d *sim.Datacenter, rule simulator.FaultInjectionRule) {
	t.Helper()
	if err := d.AddFault(rule); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.ClearFaults)
}

// Client returns a govmomi client logged in to d over HTTP, logged out at
// cleanup (before the datacenter closes, as cleanups run last-in first-out).
func Client(t testing.TB, d *sim.Datacenter) *govmomi.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := d.Client(ctx)
	if err != nil {
		t.Fatalf("simtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Logout(ctx)
	})
	return c
}

// StartWithGuests starts a datacenter of one cluster with the given number
// of hosts whose pod VMs run guests with the agent (guests required), in a
// short temporary directory (unix socket paths are limited to 107 bytes).
// It returns the datacenter and the channel directory where host agents
// listen.
func StartWithGuests(t testing.TB, hosts int, agent string) (*sim.Datacenter, string) {
	t.Helper()
	base, err := os.MkdirTemp("", "pvg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	channels := filepath.Join(base, "ch")
	d := Start(t, sim.Config{Clusters: 1, HostsPerCluster: hosts, Dir: base, GuestsRequired: true,
		Guests: &guest.Config{Agent: agent, ChannelDir: channels, Dir: filepath.Join(base, "g"), StopGrace: 2 * time.Second}})
	return d, channels
}

// HostNames lists the names of the hosts of cluster ("": of every
// cluster), sorted.
func HostNames(d *sim.Datacenter, cluster string) []string {
	var out []string
	for _, h := range d.Hosts() {
		if cluster == "" || h.Cluster == cluster {
			out = append(out, h.Name)
		}
	}
	slices.Sort(out)
	return out
}

// ClusterOf is the cluster of host.
func ClusterOf(t testing.TB, d *sim.Datacenter, host string) string {
	t.Helper()
	h, err := d.Host(host)
	if err != nil {
		t.Fatalf("simtest: host %s: %v", host, err)
	}
	return h.Cluster
}

// Session connects to d the way `podvisor serve` does (a vsphere.Session),
// closed at cleanup: a service under test gets its own, as another process
// would.
func Session(t testing.TB, d *sim.Datacenter) *vsphere.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := vsphere.Connect(ctx, vsphere.Config{URL: d.URL().String(), Insecure: true})
	if err != nil {
		t.Fatalf("simtest: vSphere session: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}
