package imagecache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/shared/bustest"
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
		{name: "bad fields all named", cfg: imagecache.Config{Workers: -1, Datastores: []string{"ds", "", "ds", "[x]"}, LeaseTTL: time.Millisecond, ReserveBytes: -1, GCBudgetBytes: -5},
			wantErr: []string{"Workers -1: must", `Datastores[1] "": must name a datastore`, `Datastores[2] "ds": must not be listed twice`, `Datastores[3] "[x]": must not contain`, "LeaseTTL 1ms: must", "ReserveBytes -1: must", "GCBudgetBytes -5: must"}},
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
