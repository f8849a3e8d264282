package migration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func TestConfigFromEnv(t *testing.T) {
	t.Setenv(EnvMaxPerHost, "3")
	t.Setenv(EnvMaxPerCluster, "8")
	t.Setenv(EnvRelocateTimeout, "90s")
	cfg, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits != (Limits{PerSourceHost: 3, PerCluster: 8}) || cfg.RelocateTimeout != 90*time.Second {
		t.Errorf("cfg = %+v", cfg)
	}
	if d := DefaultConfig(); d.Limits != (Limits{PerSourceHost: 2, PerCluster: 5}) {
		t.Errorf("default limits %+v, want 2 per host and 5 per cluster", d.Limits)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		edit func(*Config)
		want []string
	}{
		{name: "not a number", env: map[string]string{EnvMaxPerHost: "two"}, want: []string{EnvMaxPerHost, "want a whole number"}},
		{name: "not a duration", env: map[string]string{EnvRelocateTimeout: "10"}, want: []string{EnvRelocateTimeout, "want a duration"}},
		{name: "zero limits", edit: func(c *Config) { c.Limits = Limits{} }, want: []string{"Limits.PerSourceHost", "Limits.PerCluster"}},
		{name: "host above cluster", edit: func(c *Config) { c.Limits = Limits{PerSourceHost: 6, PerCluster: 5} }, want: []string{"Limits.PerSourceHost 6: must not exceed Limits.PerCluster 5"}},
		{name: "backoff too long", edit: func(c *Config) { c.MaxAttempts = 2 }, want: []string{"MaxAttempts"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.env != nil {
				for k, v := range tt.env {
					t.Setenv(k, v)
				}
				_, err = ConfigFromEnv()
			} else {
				cfg := DefaultConfig()
				tt.edit(&cfg)
				err = cfg.Validate()
			}
			testenv.CheckErrorMentions(t, err, tt.want...)
		})
	}
}

// TestNewWithSession builds the service the way `podvisor serve migration`
// does, from a vSphere session, and refuses missing dependencies.
func TestNewWithSession(t *testing.T) {
	b := bustest.Start(t)
	dc := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 2})
	s, err := vsphere.Connect(t.Context(), vsphere.Config{URL: dc.URL().String(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	svc, err := New(DefaultConfig(), Deps{Bus: b, VSphere: s})
	if err != nil {
		t.Fatal(err)
	}
	h, err := svc.vm.Host(t.Context(), dc.Hosts()[0].Name)
	if err != nil || !h.Connected() || h.Pool.Value == "" {
		t.Fatalf("host through the session: %+v, %v", h, err)
	}
	if _, err := New(DefaultConfig(), Deps{Bus: b}); !errors.Is(err, deps.ErrMissing) || !strings.Contains(err.Error(), "Deps.VSphere") {
		t.Errorf("without VSphere: %v, want Deps.VSphere required", err)
	}
	if _, err := New(DefaultConfig(), Deps{VSphere: s}); !errors.Is(err, deps.ErrMissing) || !strings.Contains(err.Error(), "Deps.Bus") {
		t.Errorf("without Bus: %v, want Deps.Bus required", err)
	}
}

// TestPruneRemovesOldFinishedRecords: finished records past the retention
// go; recent ones and active ones stay.
func TestPruneRemovesOldFinishedRecords(t *testing.T) {
	w := newWorld(t, 1, 1)
	cfg := testConfig()
	cfg.RecordRetention = time.Hour
	svc := w.newService(cfg)
	w.svc = svc
	ctx := t.Context()
	now := time.Now().UTC()
	for _, r := range []*events.MigrationRecord{
		{ID: "old", Namespace: "default", Pod: "a", Phase: events.MigrationPhaseCompleted, EndedAt: now.Add(-2 * time.Hour)},
		{ID: "recent", Namespace: "default", Pod: "b", Phase: events.MigrationPhaseFailed, EndedAt: now.Add(-time.Minute)},
		{ID: "active", Namespace: "default", Pod: "c", Phase: events.PhaseQueued, CreatedAt: now.Add(-3 * time.Hour)},
	} {
		if err := svc.store.createMigration(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	svc.prune(ctx)
	for id, want := range map[string]bool{"old": false, "recent": true, "active": true} {
		if got := w.migrationPhase(id) != ""; got != want {
			t.Errorf("%s kept = %v, want %v", id, got, want)
		}
	}
}
