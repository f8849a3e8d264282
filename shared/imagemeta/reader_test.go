package imagemeta_test

import (
	"context"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/redistest"
)

func digest(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

// fixture writes what the image cache would: two images sharing a base layer.
//
//	web    = base(100) + app(50)      on ds-a (ready), base also on ds-b (pulling)
//	worker = base(100) + job(300)     job on ds-c only (ready), base not on ds-c
func fixture(t *testing.T, c *redis.Client) (web, worker imagemeta.Manifest) {
	t.Helper()
	ctx := context.Background()
	base := imagemeta.Layer{Digest: digest('1'), DiffID: digest('2'), ChainID: digest('a'), Size: 100}
	app := imagemeta.Layer{Digest: digest('3'), DiffID: digest('4'), ChainID: digest('b'), Size: 50}
	job := imagemeta.Layer{Digest: digest('5'), DiffID: digest('6'), ChainID: digest('c'), Size: 300}
	web = imagemeta.Manifest{Digest: digest('w'), Image: "reg/web:1", Layers: []imagemeta.Layer{base, app}}
	worker = imagemeta.Manifest{Digest: digest('x'), Image: "reg/worker:1", Layers: []imagemeta.Layer{base, job}}
	for ref, m := range map[string]imagemeta.Manifest{"reg/web:1": web, "reg/worker:1": worker} {
		b, _ := json.Marshal(m)
		c.Set(ctx, imagemeta.RefKey(ref), m.Digest, 0)
		c.Set(ctx, imagemeta.ManifestKey(m.Digest), b, 0)
		c.SAdd(ctx, imagemeta.IndexImages, m.Digest)
	}
	put := func(l imagemeta.Layer, depth int, ds, state string, refs int) {
		rec := events.ChainRecord{ChainID: l.ChainID, Datastore: ds, Disk: "[" + ds + "] podvisor-images/" + l.ChainID[7:15] + "/disk.vmdk",
			Layer: l.Digest, DiffID: l.DiffID, Depth: depth, Size: l.Size}
		c.HSet(ctx, imagemeta.ChainKey(l.ChainID, ds), imagemeta.EncodeChain(rec)...)
		c.HSet(ctx, imagemeta.ChainKey(l.ChainID, ds), imagemeta.FieldState, state, imagemeta.FieldRefs, refs)
		c.HSet(ctx, imagemeta.ChainLocsKey(l.ChainID), ds, state)
		c.SAdd(ctx, imagemeta.IndexChains, imagemeta.IndexMember(l.ChainID, ds))
	}
	put(base, 1, "ds-a", events.ChainStateReady, 3)
	put(app, 2, "ds-a", events.ChainStateReady, 2)
	put(base, 1, "ds-b", events.ChainStatePulling, 0)
	put(job, 2, "ds-c", events.ChainStateReady, 1)
	put(job, 2, "ds-d", events.ChainStateFailed, 0)
	return web, worker
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestLocality(t *testing.T) {
	c := redistest.Start(t)
	fixture(t, c)
	r := imagemeta.NewReader(c)
	ctx := context.Background()

	tests := []struct {
		name   string
		images []string
		want   map[string]float64
	}{
		{name: "web alone", images: []string{"reg/web:1"}, want: map[string]float64{"ds-a": 1, "ds-b": 100.0 / 150}},
		{name: "worker alone, failed chain does not count", images: []string{"reg/worker:1"},
			want: map[string]float64{"ds-a": 100.0 / 400, "ds-b": 100.0 / 400, "ds-c": 300.0 / 400}},
		{name: "both share base once", images: []string{"reg/web:1", "reg/worker:1", "reg/web:1"},
			want: map[string]float64{"ds-a": 150.0 / 450, "ds-b": 100.0 / 450, "ds-c": 300.0 / 450}},
		{name: "unknown image is left out", images: []string{"reg/none:1", "reg/web:1"}, want: map[string]float64{"ds-a": 1, "ds-b": 100.0 / 150}},
		{name: "nothing known", images: []string{"reg/none:1"}, want: map[string]float64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Locality(ctx, tt.images)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Locality = %v, want %v", got, tt.want)
			}
			for ds, w := range tt.want {
				if !near(got[ds], w) {
					t.Fatalf("Locality[%s] = %v, want %v (all: %v)", ds, got[ds], w, got)
				}
			}
		})
	}
}

func TestImages(t *testing.T) {
	c := redistest.Start(t)
	web, _ := fixture(t, c)
	got, err := imagemeta.NewReader(c).Images(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		image, ds, state string
		refs             int
	}
	var rows []row
	for _, r := range got {
		rows = append(rows, row{r.Image, r.Datastore, r.State, r.Refs})
	}
	want := []row{
		{"reg/web:1", "ds-a", events.ChainStateReady, 2},
		{"reg/web:1", "ds-b", events.ImageStateMissing, 0},
		{"reg/worker:1", "ds-a", events.ImageStateMissing, 0},
		{"reg/worker:1", "ds-b", events.ImageStateMissing, 0},
		{"reg/worker:1", "ds-c", events.ImageStateMissing, 1},
		{"reg/worker:1", "ds-d", events.ImageStateMissing, 0},
	}
	if len(rows) != len(want) {
		t.Fatalf("Images rows = %+v, want %+v", rows, want)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
	if got[0].Size != web.Size() || got[0].Layers != 2 || got[0].TopDisk == "" || got[0].Digest != web.Digest {
		t.Errorf("web on ds-a = %+v, want size %d, 2 layers, a top disk", got[0], web.Size())
	}
}

func TestChainsDecodeRecords(t *testing.T) {
	c := redistest.Start(t)
	fixture(t, c)
	// An index entry whose record is gone (a crash between the two writes) is skipped.
	c.SAdd(context.Background(), imagemeta.IndexChains, imagemeta.IndexMember(digest('e'), "ds-z"))
	chains, err := imagemeta.NewReader(c).Chains(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != 5 {
		t.Fatalf("Chains = %d records, want 5", len(chains))
	}
	if chains[0].Datastore != "ds-a" || chains[0].Depth != 1 || chains[0].Refs != 3 || chains[0].Size != 100 {
		t.Fatalf("first chain = %+v, want base on ds-a with 3 refs", chains[0])
	}
}

func TestDecodeChainRejectsGarbage(t *testing.T) {
	_, _, err := imagemeta.DecodeChain(map[string]string{imagemeta.FieldChainID: digest('a'), imagemeta.FieldSize: "big"})
	if err == nil || !strings.Contains(err.Error(), "size") {
		t.Fatalf("err = %v, want it to name the size field", err)
	}
}

func TestParseIndexMember(t *testing.T) {
	id, ds, ok := imagemeta.ParseIndexMember(digest('a') + "@my ds")
	if !ok || id != digest('a') || ds != "my ds" {
		t.Fatalf("ParseIndexMember = %q %q %v", id, ds, ok)
	}
	if _, _, ok := imagemeta.ParseIndexMember("nods@"); ok {
		t.Fatal("member without datastore accepted")
	}
}

func TestListImagesBadURL(t *testing.T) {
	if _, err := imagemeta.ListImages(context.Background(), "http://nope", ""); err == nil || !strings.Contains(err.Error(), "redis url") {
		t.Fatalf("err = %v", err)
	}
}
