// Package config reads a service's settings from where they come from (the
// environment, the all-in-one's defaults, an env file) into its Config
// struct, in one place and without writing the process environment.
//
// A Source answers "what is the value of this setting"; Env is the
// process environment, Map a set of values, and Layered puts sources in
// order (the first that has a setting wins), which is how `podvisor up`
// gives the services its simulator defaults under whatever the user set:
//
//	src := config.Layered(config.Env(), config.Map(simulatorDefaults))
//	cfg, err := netconfig.ConfigFrom(src)
//
// A service's ConfigFrom is one call to Load: from its defaults, it
// declares each setting once on a Reader, which collects every bad value
// with the variable's name and what was wanted, so that one run reports
// them all; Load then validates what was read:
//
//	return config.Load(src, DefaultConfig(), func(r *config.Reader, c *Config) {
//		r.Int("PODVISOR_SCHEDULER_WORKERS", &c.Workers)
//		r.Duration("PODVISOR_SCHEDULER_RESYNC_INTERVAL", &c.ResyncInterval)
//		r.Parse("PODVISOR_SCHEDULER_PROFILE_FILE", func(path string) error { … }) // a kind of its own
//	})
//
// An unset or empty variable leaves the default. Validate names Config
// fields (config.Checks); when it refuses a field a setting was read
// into, Load's error names the setting too, since that is what the user
// set: "Workers 0 (PODVISOR_SCHEDULER_WORKERS): must be at least 1".
package config
