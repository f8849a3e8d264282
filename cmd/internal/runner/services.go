package runner

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
	"github.com/podvisor/podvisor/services/hostagent"

	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/migration"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/imagemeta"
)

// table is every service: its name, the connections it needs, how its
// Config is read from settings and how it is built from Config and Deps.
// A container (`serve`) and an in-process `up` configure a service the
// same way, from the settings source they are given.
var table = []Spec{
	service("guestcluster", true, false, guestcluster.ConfigFrom, func(c guestcluster.Config, d Deps) (*guestcluster.Service, error) {
		return guestcluster.New(c, guestcluster.Deps{Deps: d.Deps, GuestPorts: d.GuestPorts})
	}),
	service("imagecache", true, true, imagecache.ConfigFrom, connections(imagecache.New)),
	service("migration", true, false, migration.ConfigFrom, connections(migration.New)),
	service("netconfig", true, false, netconfig.ConfigFrom, connections(netconfig.New)),
	service("provisioner", true, false, provisioner.ConfigFrom, connections(provisioner.New)),
	service("scheduler", true, true, scheduler.ConfigFrom, connections(scheduler.New)),
	hostAgents,
	dashboardSpec,
}

// dashboardSpec serves the read-only dashboard (package dashboard) as its
// own identity; with PODVISOR_REDIS_URL set (a read-only Redis user) it
// shows the image chains too.
var dashboardSpec = Spec{
	Name:       "dashboard",
	InUp:       true,
	WantsRedis: true,
	Check: func(src config.Source) error {
		_, err := dashboard.ConfigFrom(orEnv(src))
		return err
	},
	Run: func(ctx context.Context, d Deps) error {
		cfg, err := dashboard.ConfigFrom(orEnv(d.Settings))
		if err != nil {
			return err
		}
		var images dashboard.ImageLister
		if d.Redis != nil {
			images = imagemeta.NewReader(d.Redis).Images
		}
		return dashboard.Serve(ctx, cfg, d.Bus, images, d.Logger, nil)
	},
}

// hostAgents runs the host agent of every host PODVISOR_HOSTAGENT_HOST
// names (one, or a comma-separated list), side by side in this process, on
// guest channels arriving in PODVISOR_HOSTAGENT_CHANNEL_DIR. All of them
// stop when one fails: a host whose agent is gone must not look served.
var hostAgents = Spec{
	Name:    "hostagent",
	PerHost: true,
	Check: func(src config.Source) error {
		_, _, err := hostAgentConfigs(orEnv(src))
		return err
	},
	Run: func(ctx context.Context, d Deps) error {
		src := orEnv(d.Settings)
		cfgs, cc, err := hostAgentConfigs(src)
		if err != nil {
			return err
		}
		if hostagent.ServesEveryHost(src) {
			return everyHostAgent(ctx, d, src, cc)
		}
		svcs := make(map[string]*hostagent.Service, len(cfgs))
		for _, c := range cfgs {
			if svcs[c.Host], err = hostagent.New(c, hostagent.Deps{Deps: d.Deps}); err != nil {
				return err
			}
		}
		g, gctx := errgroup.WithContext(ctx)
		for _, svc := range svcs {
			g.Go(func() error { return svc.Run(gctx) })
		}
		if cc.Listen != "" {
			conc, err := hostagent.ListenConcentrator(cc, svcs, d.Logger)
			if err != nil {
				return err
			}
			g.Go(func() error { return conc.Run(gctx) })
		}
		return g.Wait()
	},
}

// hostAgentConfigs reads the host agents' settings: one Config per host
// listed (none for every host), and the concentrator's.
func hostAgentConfigs(src config.Source) ([]hostagent.Config, hostagent.ConcentratorConfig, error) {
	cc, err := hostagent.ConcentratorConfigFrom(src)
	if err != nil {
		return nil, cc, err
	}
	if hostagent.ServesEveryHost(src) {
		if cc.Listen == "" {
			return nil, cc, fmt.Errorf("hostagent config: %s=%s serves the hosts whose channels arrive at the concentrator: set %s",
				hostagent.EnvHost, hostagent.EveryHost, hostagent.EnvConcentrator)
		}
		_, err := hostagent.ConfigFor(src, "every-host")
		return nil, cc, err
	}
	cfgs, err := hostagent.ConfigsFrom(src)
	return cfgs, cc, err
}

// everyHostAgent runs the concentrator and an agent for every host of the
// inventory, each added as its host appears.
func everyHostAgent(ctx context.Context, d Deps, src config.Source, cc hostagent.ConcentratorConfig) error {
	conc, err := hostagent.ListenConcentrator(cc, nil, d.Logger)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return conc.Run(gctx) })
	// One delete consumer for every host (ConfigFor: SharedDeletes).
	g.Go(func() error { return hostagent.RunDeletes(gctx, d.Bus, conc.AgentOf, d.Logger) })
	g.Go(func() error {
		return hostagent.FollowHosts(gctx, d.Bus, func(host string) error {
			cfg, err := hostagent.ConfigFor(src, host)
			if err != nil {
				return err
			}
			svc, err := hostagent.New(cfg, hostagent.Deps{Deps: d.Deps})
			if err != nil {
				return err
			}
			g.Go(func() error { return svc.Run(gctx) })
			conc.Add(host, svc)
			return nil
		}, func(host string, err error) {
			// One host this process cannot serve (a name its settings
			// refuse) is not the end of the others.
			d.Logger.Warn("host agent not started", "host", host, "err", err)
		})
	})
	return g.Wait()
}

// service makes the Spec of a service from its ConfigFrom and constructor.
func service[C any, S interface{ Run(context.Context) error }](name string, needsVSphere, needsRedis bool,
	from func(config.Source) (C, error), build func(C, Deps) (S, error)) Spec {
	return Spec{
		Name:         name,
		NeedsVSphere: needsVSphere,
		NeedsRedis:   needsRedis,
		Check: func(src config.Source) error {
			_, err := from(orEnv(src))
			return err
		},
		Run: func(ctx context.Context, d Deps) error {
			cfg, err := from(orEnv(d.Settings))
			if err != nil {
				return err
			}
			svc, err := build(cfg, d)
			if err != nil {
				return err
			}
			return svc.Run(ctx)
		},
	}
}

// connections adapts the constructor of a service built from its
// connections alone.
func connections[C, S any](build func(C, deps.Deps) (S, error)) func(C, Deps) (S, error) {
	return func(c C, d Deps) (S, error) { return build(c, d.Deps) }
}

// orEnv is src, or the process environment when src is nil.
func orEnv(src config.Source) config.Source {
	if src == nil {
		return config.Env()
	}
	return src
}
