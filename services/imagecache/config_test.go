package imagecache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/redistest"
	"github.com/podvisor/podvisor/shared/testenv"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     imagecache.Config
		wantErr []string
	}{
		{name: "zero value is valid", cfg: imagecache.Config{}},
		{name: "negative means none", cfg: imagecache.Config{ReserveBytes: -1, GCBudgetBytes: -5, GCGrace: -time.Second, ResolveTTL: -time.Second}},
		{name: "bad fields all named", cfg: imagecache.Config{Workers: -1, Datastores: []string{"ds", "", "ds", "[x]"}, LeaseTTL: time.Millisecond},
			wantErr: []string{"Workers -1: must", `Datastores[1] "": must name a datastore`, `Datastores[2] "ds": must not be listed twice`, `Datastores[3] "[x]": must not contain`, "LeaseTTL 1ms: must"}},
		{name: "each negative cap named", cfg: imagecache.Config{MaxLayerEntries: -1, Limits: oci.Limits{MaxManifestBytes: -2, MaxLayers: -3, MaxLayerBytes: -4, MaxUncompressedBytes: -5, MaxRatio: -6, RatioFloor: -7}},
			wantErr: []string{"Limits.MaxManifestBytes -2: must not be negative", "Limits.MaxLayers -3: must not be negative", "Limits.MaxLayerBytes -4: must not be negative",
				"Limits.MaxUncompressedBytes -5: must not be negative", "Limits.MaxRatio -6: must not be negative", "Limits.RatioFloor -7: must not be negative", "MaxLayerEntries -1: must not be negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			testenv.CheckErrorMentions(t, err, tt.wantErr...)
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("PODVISOR_IMAGECACHE_WORKERS", "4")
	t.Setenv("PODVISOR_IMAGE_DATASTORES", "shared-ds, cluster-1-ds")
	t.Setenv("PODVISOR_IMAGE_GC_BUDGET", "2Gi")
	t.Setenv("PODVISOR_IMAGE_GC_GRACE", "90s")
	t.Setenv("PODVISOR_IMAGE_RESOLVE_TTL", "-1s")
	cfg, err := imagecache.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 4 || len(cfg.Datastores) != 2 || cfg.Datastores[1] != "cluster-1-ds" || cfg.GCBudgetBytes != 2<<30 || cfg.GCGrace != 90*time.Second || cfg.ResolveTTL != -time.Second {
		t.Fatalf("ConfigFromEnv = %+v", cfg)
	}
	if cfg.LeaseTTL != imagecache.DefaultLeaseTTL {
		t.Fatalf("unset LeaseTTL = %s, want the default", cfg.LeaseTTL)
	}

	t.Setenv("PODVISOR_IMAGE_GC_BUDGET", "lots")
	t.Setenv("PODVISOR_IMAGE_GC_GRACE", "soon")
	_, err = imagecache.ConfigFromEnv()
	if err == nil || !strings.Contains(err.Error(), "PODVISOR_IMAGE_GC_BUDGET") || !strings.Contains(err.Error(), "PODVISOR_IMAGE_GC_GRACE") {
		t.Fatalf("bad env: err = %v, want both variables named", err)
	}
}

// An explicit 0 is not taken for an unset variable: where 0 means none it
// stays none through New's defaults, and elsewhere it is refused naming
// the variable. A negative cap is refused naming its field and variable.
// Before, each 0 silently became the default (a 1 GiB reserve, a 20 GiB
// budget, a 10m grace), and a negative cap was "Limits: caps must not be
// negative", naming neither.
func TestConfigFromEnvZeroIsNotUnset(t *testing.T) {
	cfg, err := imagecache.ConfigFrom(config.Map(map[string]string{
		"PODVISOR_IMAGE_RESERVE":     "0",
		"PODVISOR_IMAGE_GC_BUDGET":   "0Gi",
		"PODVISOR_IMAGE_GC_GRACE":    "0s",
		"PODVISOR_IMAGE_RESOLVE_TTL": "0",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ReserveBytes >= 0 || cfg.GCBudgetBytes >= 0 || cfg.GCGrace >= 0 || cfg.ResolveTTL >= 0 {
		t.Fatalf("ConfigFrom with 0s = reserve %d, budget %d, grace %s, resolve TTL %s; want none (negative) for each",
			cfg.ReserveBytes, cfg.GCBudgetBytes, cfg.GCGrace, cfg.ResolveTTL)
	}
	// What New does with it: the defaults must not come back.
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate = %v", err)
	}
	unset, err := imagecache.ConfigFrom(config.Map(nil))
	if err != nil {
		t.Fatal(err)
	}
	if unset.ReserveBytes != imagecache.DefaultReserveBytes || unset.GCBudgetBytes != imagecache.DefaultGCBudgetBytes || unset.GCGrace != imagecache.DefaultGCGrace {
		t.Fatalf("ConfigFrom unset = %+v, want the defaults", unset)
	}

	for _, tc := range []struct{ variable, value, want string }{
		{"PODVISOR_IMAGECACHE_WORKERS", "0", `PODVISOR_IMAGECACHE_WORKERS="0": want more than 0`},
		{"PODVISOR_IMAGE_LEASE_TTL", "0s", `PODVISOR_IMAGE_LEASE_TTL="0s": want more than 0`},
		{"PODVISOR_IMAGE_GC_INTERVAL", "0", `PODVISOR_IMAGE_GC_INTERVAL="0": want more than 0`},
		{"PODVISOR_IMAGE_MAX_LAYERS", "0", `PODVISOR_IMAGE_MAX_LAYERS="0": want more than 0`},
		{"PODVISOR_IMAGE_MAX_MANIFEST", "0Mi", `PODVISOR_IMAGE_MAX_MANIFEST="0Mi": want more than 0`},
		{"PODVISOR_IMAGE_MAX_ENTRIES", "0", `PODVISOR_IMAGE_MAX_ENTRIES="0": want more than 0`},
		{"PODVISOR_IMAGE_MAX_LAYERS", "-1", "Limits.MaxLayers -1 (PODVISOR_IMAGE_MAX_LAYERS): must not be negative"},
		{"PODVISOR_IMAGE_MAX_RATIO", "-2", "Limits.MaxRatio -2 (PODVISOR_IMAGE_MAX_RATIO): must not be negative"},
		{"PODVISOR_IMAGE_MAX_ENTRIES", "-3", "MaxLayerEntries -3 (PODVISOR_IMAGE_MAX_ENTRIES): must not be negative"},
	} {
		t.Run(tc.variable+"="+tc.value, func(t *testing.T) {
			_, err := imagecache.ConfigFrom(config.Map(map[string]string{tc.variable: tc.value}))
			testenv.CheckErrorMentions(t, err, tc.want)
		})
	}
}

func TestNewRequiresDeps(t *testing.T) {
	_, err := imagecache.New(imagecache.Config{}, imagecache.Deps{})
	for _, w := range []string{"Bus", "VSphere", "Redis"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("New without deps: %v, want it to name %s", err, w)
		}
	}
}

func TestRunRejectsUnknownDatastore(t *testing.T) {
	e := &env{Env: &testenv.Env{T: t, Bus: bustest.Start(t)}, vc: startVCenter(t), redis: redistest.Start(t)}
	svc, err := imagecache.New(imagecache.Config{Datastores: []string{"no-such-ds"}}, imagecache.Deps{
		Bus: e.Bus, VSphere: e.vc.Session(), Redis: e.redis})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = svc.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), `Datastores[0]: datastore "no-such-ds" does not exist`) {
		t.Fatalf("Run = %v, want the unknown datastore named", err)
	}
}
