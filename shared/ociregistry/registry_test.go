package ociregistry_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/podvisor/podvisor/shared/ociregistry"
)

func start(t *testing.T, cfg ociregistry.Config) *ociregistry.Registry {
	t.Helper()
	reg, err := ociregistry.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	return reg
}

func TestSeedSharesBaseLayersAndIsDeterministic(t *testing.T) {
	ctx := context.Background()
	digests := map[string]string{}
	for run := 0; run < 2; run++ {
		reg := start(t, ociregistry.Config{})
		refs, err := ociregistry.Seed(ctx, reg.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if len(refs) != 3 {
			t.Fatalf("Seed returned %d refs, want 3", len(refs))
		}
		layersOf := map[string][]string{}
		for _, ref := range refs {
			r, _ := name.ParseReference(ref)
			img, err := remote.Image(r, remote.WithContext(ctx))
			if err != nil {
				t.Fatalf("pull %s: %v", ref, err)
			}
			d, _ := img.Digest()
			short := ref[strings.Index(ref, "/")+1:]
			if prev, ok := digests[short]; ok && prev != d.String() {
				t.Fatalf("%s digest changed between runs: %s then %s", short, prev, d)
			}
			digests[short] = d.String()
			ls, _ := img.Layers()
			for _, l := range ls {
				ld, _ := l.Digest()
				layersOf[short] = append(layersOf[short], ld.String())
			}
		}
		base, web, worker := layersOf["podvisor/base:1.0"], layersOf["podvisor/web:1.0"], layersOf["podvisor/worker:1.0"]
		if len(base) != 1 || len(web) != 3 || len(worker) != 2 {
			t.Fatalf("layer counts base=%d web=%d worker=%d, want 1 3 2", len(base), len(web), len(worker))
		}
		if web[0] != base[0] || worker[0] != base[0] {
			t.Fatalf("web and worker must start with base's layer %s: web %s worker %s", base[0], web[0], worker[0])
		}
		if web[1] == worker[1] {
			t.Fatal("web and worker top layers must differ")
		}
	}
}

func TestWrapSeesTraffic(t *testing.T) {
	var requests atomic.Int64
	reg := start(t, ociregistry.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			h.ServeHTTP(w, r)
		})
	}})
	if _, err := ociregistry.Seed(context.Background(), reg.Addr()); err != nil {
		t.Fatal(err)
	}
	if requests.Load() == 0 {
		t.Fatal("Wrap handler saw no requests")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr string
	}{
		{addr: ""},
		{addr: "127.0.0.1:0"},
		{addr: "localhost:5000"},
		{addr: "0.0.0.0:5000", wantErr: "loopback"},
		{addr: "nonsense", wantErr: "host:port"},
	}
	for _, tt := range tests {
		err := ociregistry.Config{Addr: tt.addr}.Validate()
		if tt.wantErr == "" && err != nil {
			t.Errorf("Validate(%q) = %v, want nil", tt.addr, err)
		}
		if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("Validate(%q) = %v, want error containing %q", tt.addr, err, tt.wantErr)
		}
	}
}

func TestLayerRejectsBadSpec(t *testing.T) {
	if _, err := ociregistry.Layer(ociregistry.LayerSpec{Size: 1}); err == nil || !strings.Contains(err.Error(), "path") {
		t.Fatalf("Layer without path: err = %v, want it to name the path", err)
	}
}
