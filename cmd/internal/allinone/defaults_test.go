package allinone

import (
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/services/provisioner"
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
