package serve

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A bad setting is reported before any connection is made, as a settings
// error (exit status 2), naming the setting.
func TestBadSettingsStopBeforeConnecting(t *testing.T) {
	for _, tc := range []struct{ name, env, value, want string }{
		{"scheduler", "PODVISOR_PROFILING", "maybe", "PODVISOR_PROFILING"},
		{"scheduler", "PODVISOR_STREAM_REPLICAS", "9", "PODVISOR_STREAM_REPLICAS"},
		{"no-such-service", "PODVISOR_PROFILING", "true", "no-such-service"},
		// A service's own settings (its Check), and the host agents'.
		{"scheduler", "PODVISOR_SCHEDULER_WORKERS", "-3", "Workers"},
		{"hostagent", "PODVISOR_HOSTAGENT_HOST", "*", "PODVISOR_HOSTAGENT_CONCENTRATOR"},
	} {
		t.Setenv(tc.env, tc.value)
		// No NATS anywhere: reaching a connection would fail differently.
		t.Setenv("PODVISOR_NATS_URL", "nats://127.0.0.1:1")
		err := Run(context.Background(), tc.name, Options{StateDir: t.TempDir()})
		if !errors.Is(err, ErrSettings) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s with %s=%s: %v; want a settings error naming %s", tc.name, tc.env, tc.value, err, tc.want)
		}
		t.Setenv(tc.env, "")
	}
}
