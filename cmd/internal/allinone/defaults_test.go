package allinone

import (
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/shared/sim"
)

// The provisioner settings that follow from guests on or off, as the
// provisioner reads them.
func TestServiceDefaultsFollowGuests(t *testing.T) {
	for _, tt := range []struct {
		name      string
		guestsOff string
		timeout   time.Duration
		await     bool
	}{
		{"guests on", "", 60 * time.Second, true},
		{"guests off", "not root", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &System{GuestsOff: tt.guestsOff}
			for k, v := range s.serviceDefaults() {
				t.Setenv(k, v)
			}
			cfg, err := provisioner.ConfigFromEnv()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.GuestTimeout != tt.timeout || cfg.AwaitGuestStop != tt.await {
				t.Errorf("guest timeout %s await stop %v, want %s %v", cfg.GuestTimeout, cfg.AwaitGuestStop, tt.timeout, tt.await)
			}
			if env := s.simulatorEnv(); !strings.Contains(env, "PODVISOR_NETCONFIG_PROBE_WINDOW") {
				t.Errorf("env file lost the simulator defaults:\n%s", env)
			}
		})
	}
}

// up --templates-warm N sets the provisioner's warm template count, over
// what the environment says, and the env file exports it; without the
// flag the environment decides (off unless set).
func TestTemplatesWarmFlag(t *testing.T) {
	t.Setenv(provisioner.EnvTemplatesWarm, "1")
	for _, tt := range []struct {
		flag, want int
	}{{0, 1}, {3, 3}} {
		s := &System{cfg: Config{TemplatesWarm: tt.flag}, Datacenter: &sim.Datacenter{}}
		cfg, err := provisioner.ConfigFrom(s.settings())
		if err != nil {
			t.Fatal(err)
		}
		if cfg.TemplatesWarm != tt.want {
			t.Errorf("--templates-warm %d with %s=1 in the environment: provisioner keeps %d warm, want %d", tt.flag, provisioner.EnvTemplatesWarm, cfg.TemplatesWarm, tt.want)
		}
		if tt.flag > 0 && !strings.Contains(s.simulatorEnv(), provisioner.EnvTemplatesWarm+"='3'") {
			t.Errorf("env file does not export the flag's %s=3:\n%s", provisioner.EnvTemplatesWarm, s.simulatorEnv())
		}
	}
}
