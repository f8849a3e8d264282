package runner

import (
	"context"

	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/migration"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/scheduler"
)

// Each service is built from its own ConfigFromEnv, so a container and an
// in-process `up` configure it the same way.
func init() {
	register(Spec{Name: "scheduler", Check: check(scheduler.ConfigFromEnv), NeedsVSphere: true, NeedsRedis: true, Run: func(ctx context.Context, d Deps) error {
		cfg, err := scheduler.ConfigFromEnv()
		if err != nil {
			return err
		}
		svc, err := scheduler.New(cfg, scheduler.Deps{Bus: d.Bus, VSphere: d.VSphere, Redis: d.Redis, Logger: d.Logger})
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	}})
	register(Spec{Name: "provisioner", Check: check(provisioner.ConfigFromEnv), NeedsVSphere: true, Run: func(ctx context.Context, d Deps) error {
		cfg, err := provisioner.ConfigFromEnv()
		if err != nil {
			return err
		}
		svc, err := provisioner.New(cfg, provisioner.Deps{Bus: d.Bus, VSphere: d.VSphere, Logger: d.Logger})
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	}})
	register(Spec{Name: "netconfig", Check: check(netconfig.ConfigFromEnv), NeedsVSphere: true, Run: func(ctx context.Context, d Deps) error {
		cfg, err := netconfig.ConfigFromEnv()
		if err != nil {
			return err
		}
		svc, err := netconfig.New(cfg, netconfig.Deps{Bus: d.Bus, VSphere: d.VSphere, Logger: d.Logger})
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	}})
	register(Spec{Name: "imagecache", Check: check(imagecache.ConfigFromEnv), NeedsVSphere: true, NeedsRedis: true, Run: func(ctx context.Context, d Deps) error {
		cfg, err := imagecache.ConfigFromEnv()
		if err != nil {
			return err
		}
		svc, err := imagecache.New(cfg, imagecache.Deps{Bus: d.Bus, VSphere: d.VSphere, Redis: d.Redis, Logger: d.Logger})
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	}})
	register(Spec{Name: "migration", Check: check(migration.ConfigFromEnv), NeedsVSphere: true, Run: func(ctx context.Context, d Deps) error {
		cfg, err := migration.ConfigFromEnv()
		if err != nil {
			return err
		}
		svc, err := migration.New(cfg, migration.Deps{Bus: d.Bus, VSphere: d.VSphere, Logger: d.Logger})
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	}})
}

// check turns a service's ConfigFromEnv into a Spec.Check.
func check[C any](fromEnv func() (C, error)) func() error {
	return func() error { _, err := fromEnv(); return err }
}
