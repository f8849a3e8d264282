// Package runner knows how to run each podvisor service from its
// configuration and connections. `podvisor serve NAME` runs one in its own
// process; `podvisor up` runs several side by side in one process.
package runner

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/deps"
)

// Deps are what a service is built from besides its configuration: the
// connections (package deps; each service takes the ones it needs, and
// Spec says which so that callers connect only to those), where its
// settings are read from and the simulator's paths it may use.
type Deps struct {
	deps.Deps
	// Settings is where the service's configuration is read from; nil
	// means the process environment.
	Settings config.Source
	// GuestPorts is the path into simulated native VMs' guests, set by
	// `podvisor up` when a guest cluster's control plane can run in its
	// VM; nil otherwise.
	GuestPorts guestcluster.GuestPorts
}

// Spec describes one runnable service.
type Spec struct {
	Name         string
	NeedsVSphere bool
	NeedsRedis   bool
	// WantsRedis connects to Redis when PODVISOR_REDIS_URL is set; the
	// service runs without it otherwise.
	WantsRedis bool
	// PerHost services run beside the hypervisor hosts they serve (the
	// host agent): `podvisor serve` runs them, `podvisor up` starts its
	// own per simulated host, so --services never selects them.
	PerHost bool
	// InUp says `podvisor up` serves this itself in another form (the
	// dashboard is up's status page), so --services never selects it.
	InUp bool
	// Check reads and validates the service's configuration from src, so
	// that a bad setting is reported before anything starts.
	Check func(src config.Source) error
	// Run builds the service from its configuration (read from
	// deps.Settings) and runs it until ctx ends.
	Run func(ctx context.Context, deps Deps) error
}

// specs indexes the table by name.
var specs = func() map[string]Spec {
	m := make(map[string]Spec, len(table))
	for _, s := range table {
		m[s.Name] = s
	}
	return m
}()

// Names lists the services in a stable order.
func Names() []string {
	names := make([]string, 0, len(specs))
	for n := range specs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Lookup returns a service by name.
func Lookup(name string) (Spec, error) {
	s, ok := specs[name]
	if !ok {
		return Spec{}, fmt.Errorf("unknown service %q: want one of %s", name, strings.Join(Names(), ", "))
	}
	return s, nil
}

// Select parses a --services value: "all", "none" or a comma list.
func Select(value string) ([]Spec, error) {
	switch strings.TrimSpace(value) {
	case "all":
		out := make([]Spec, 0, len(specs))
		for _, n := range Names() {
			if !specs[n].PerHost && !specs[n].InUp {
				out = append(out, specs[n])
			}
		}
		return out, nil
	case "none", "":
		return nil, nil
	}
	var out []Spec
	seen := map[string]bool{}
	for _, n := range strings.Split(value, ",") {
		n = strings.TrimSpace(n)
		s, err := Lookup(n)
		if err != nil {
			return nil, fmt.Errorf("--services: %w", err)
		}
		if s.PerHost {
			return nil, fmt.Errorf("--services: %s runs per host: up starts one for each simulated host when guests are on, and 'podvisor serve %s' runs it elsewhere", n, n)
		}
		if s.InUp {
			return nil, fmt.Errorf("--services: up serves the %s itself (its status page); 'podvisor serve %s' runs one elsewhere", n, n)
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, s)
		}
	}
	return out, nil
}
