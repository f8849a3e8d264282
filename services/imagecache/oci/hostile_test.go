package oci_test

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podvisor/podvisor/services/imagecache/oci"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

// zerosLayer is a layer of one file of n zero bytes: a compression bomb
// when n is large (gzip shrinks zeros about a thousandfold).
func zerosLayer(t testing.TB, n int64, opts ...tarball.LayerOption) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: n, Typeflag: tar.TypeReg})
			if err == nil {
				_, err = io.CopyN(tw, zeroReader{}, n)
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

func imageOf(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func fetchAll(t testing.TB, c *oci.Client, ref string) error {
	t.Helper()
	img, err := c.Resolve(context.Background(), ref)
	if err != nil {
		return err
	}
	for i := range img.Layers {
		if _, err := c.Fetch(context.Background(), img, i, func(r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// TestLimits: each cap stops a pull with ErrLimit naming the cap; a gzip
// bomb stops after a few megabytes, quickly.
func TestLimits(t *testing.T) {
	none := ""
	reg := startRegistry(t, &none)
	bomb := reg.Ref("hostile/bomb:1")
	push(t, bomb, imageOf(t, zerosLayer(t, 128<<20)))
	web := reg.Ref("podvisor/web:1.0")

	start := time.Now()
	err := fetchAll(t, newClient(t, oci.Config{}), bomb)
	if !errors.Is(err, oci.ErrLimit) || !strings.Contains(err.Error(), "compression ratio cap") {
		t.Fatalf("bomb: %v, want the compression ratio cap", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the bomb took %s to stop", d)
	}
	t.Logf("bomb stopped after %s: %v", time.Since(start), err)

	for _, tc := range []struct {
		name   string
		limits oci.Limits
		ref    string
		want   string
	}{
		{"uncompressed", oci.Limits{MaxUncompressedBytes: 1 << 20}, web, "uncompressed layer size cap"},
		{"compressed", oci.Limits{MaxLayerBytes: 1 << 10}, web, "compressed layer size cap"},
		{"layers", oci.Limits{MaxLayers: 2}, web, "layer count cap of 2"},
		{"manifest", oci.Limits{MaxManifestBytes: 100}, web, "manifest size cap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := fetchAll(t, newClient(t, oci.Config{Limits: tc.limits, Retries: 1, RetryDelay: 1}), tc.ref)
			if !errors.Is(err, oci.ErrLimit) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrLimit naming the %s", err, tc.want)
			}
		})
	}
}

// TestFormats: OCI and Docker schema 2 manifests, gzip and zstd layers, and
// an index whose image is chosen by platform.
func TestFormats(t *testing.T) {
	none := ""
	reg := startRegistry(t, &none)
	gz := zerosLayer(t, 3<<20)
	zst := zerosLayer(t, 5<<20, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	ociImg := mutate.MediaType(imageOf(t, gz, zst), types.OCIManifestSchema1)
	ociImg = mutate.ConfigMediaType(ociImg, types.OCIConfigJSON)
	dockerImg := imageOf(t, gz) // empty.Image is Docker schema 2
	armImg := imageOf(t, zerosLayer(t, 1<<20))
	armImg, _ = mutate.ConfigFile(armImg, &v1.ConfigFile{Architecture: "arm64", OS: "linux", RootFS: mustRootFS(t, armImg)})
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: armImg, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: ociImg, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	push(t, reg.Ref("fmt/oci:1"), ociImg)
	push(t, reg.Ref("fmt/docker:1"), dockerImg)
	r, _ := name.ParseReference(reg.Ref("fmt/multi:1"))
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, oci.Config{})
	for _, ref := range []string{"fmt/oci:1", "fmt/docker:1", "fmt/multi:1"} {
		if err := fetchAll(t, c, reg.Ref(ref)); err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
	}
	digest := func(img v1.Image) string { d, _ := img.Digest(); return d.String() }
	got, err := c.Resolve(context.Background(), reg.Ref("fmt/multi:1"))
	if err != nil || got.Digest != digest(ociImg) || len(got.Layers) != 2 {
		t.Fatalf("index with the default platform: %+v, %v; want the linux/amd64 image %s", got, err, digest(ociImg))
	}
	arm := newClient(t, oci.Config{Platform: "linux/arm64"})
	if got, err := arm.Resolve(context.Background(), reg.Ref("fmt/multi:1")); err != nil || got.Digest != digest(armImg) {
		t.Fatalf("index for linux/arm64: %v, want %s", err, digest(armImg))
	}
	if _, err := oci.New(oci.Config{Platform: "amd64"}); err == nil {
		t.Fatal("platform without an OS accepted")
	}
}

func mustRootFS(t testing.TB, img v1.Image) v1.RootFS {
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf.RootFS
}

// TestRedirects: a registry may redirect to another host only when that
// host is allowed.
func TestRedirects(t *testing.T) {
	none := ""
	reg := startRegistry(t, &none)
	// The blob store: another host (port) serving the registry's blobs.
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get("http://" + reg.Addr() + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(store.Close)
	front, err := ociregistry.Start(context.Background(), ociregistry.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				http.Redirect(w, r, store.URL+strings.Replace(r.URL.Path, "redirect/", "podvisor/", 1), http.StatusTemporaryRedirect)
				return
			}
			r.URL.Path = strings.Replace(r.URL.Path, "redirect/", "podvisor/", 1)
			resp, err := http.Get("http://" + reg.Addr() + r.URL.Path)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			for k, v := range resp.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(front.Close)
	ref := front.Ref("redirect/worker:1.0")
	err = fetchAll(t, newClient(t, oci.Config{Retries: 1, RetryDelay: 1}), ref)
	storeHost := strings.TrimPrefix(store.URL, "http://")
	if !errors.Is(err, oci.ErrRefused) || !strings.Contains(err.Error(), storeHost) {
		t.Fatalf("redirect to %s without permission: %v, want ErrRefused naming it", storeHost, err)
	}
	if err := fetchAll(t, newClient(t, oci.Config{RedirectHosts: []string{storeHost}}), ref); err != nil {
		t.Fatalf("redirect to an allowed host: %v", err)
	}
}

// recorder is a transport that records the URLs asked for and dials
// nothing.
type recorder struct {
	mu   sync.Mutex
	urls []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.urls = append(r.urls, req.URL.String())
	r.mu.Unlock()
	return nil, errors.New("recorder: not sent")
}

// TestPlainHTTPOnlyForLoopbackOrInsecure: go-containerregistry speaks plain
// HTTP to private-range registries on its own; the policy sends those
// requests as HTTPS unless the registry is listed as insecure.
func TestPlainHTTPOnlyForLoopbackOrInsecure(t *testing.T) {
	for _, tc := range []struct {
		insecure []string
		plain    bool // some request goes out in plain HTTP
	}{
		{nil, false},
		{[]string{"10.1.2.3:5000"}, true},
	} {
		rec := &recorder{}
		c := newClient(t, oci.Config{Transport: rec, Insecure: tc.insecure, Retries: 1, RetryDelay: 1})
		_, _ = c.Resolve(context.Background(), "10.1.2.3:5000/app:1")
		rec.mu.Lock()
		urls := rec.urls
		rec.mu.Unlock()
		if len(urls) == 0 {
			t.Fatal("no request made")
		}
		plain := false
		for _, u := range urls {
			if p, _ := url.Parse(u); p.Scheme == "http" {
				plain = true
			}
		}
		if plain != tc.plain {
			t.Fatalf("insecure %v: requests %v; plain HTTP used = %v, want %v", tc.insecure, urls, plain, tc.plain)
		}
	}
}

// TestAuthFile: credentials of a private registry come from a docker
// config file.
func TestAuthFile(t *testing.T) {
	reg, err := ociregistry.Start(context.Background(), ociregistry.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="private"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}`, http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	cfg := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `{"auths":{%q:{"auth":%q}}}`, reg.Addr(), auth), 0o600); err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(reg.Ref("private/app:1"))
	if err := remote.Write(r, imageOf(t, zerosLayer(t, 1<<10)), remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"})); err != nil {
		t.Fatal(err)
	}
	if _, err := newClient(t, oci.Config{Retries: 1, RetryDelay: 1}).Resolve(context.Background(), reg.Ref("private/app:1")); !errors.Is(err, oci.ErrUnauthorized) {
		t.Fatalf("without credentials: %v, want ErrUnauthorized", err)
	}
	if err := fetchAll(t, newClient(t, oci.Config{AuthFile: cfg}), reg.Ref("private/app:1")); err != nil {
		t.Fatalf("with the auth file: %v", err)
	}
	if _, err := oci.New(oci.Config{AuthFile: filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Fatal("a missing auth file was accepted")
	}
}

// TestResolveKeepsRunConfig: the image config's Entrypoint, Cmd, Env, User,
// WorkingDir and ExposedPorts come with the resolved image (and its stored
// manifest); a config too large for an event or one no container could run
// with fails the resolve, naming why.
func TestResolveKeepsRunConfig(t *testing.T) {
	none := ""
	reg := startRegistry(t, &none)
	withConfig := func(ref string, cfg v1.Config) {
		img, err := mutate.Config(imageOf(t, zerosLayer(t, 1024)), cfg)
		if err != nil {
			t.Fatal(err)
		}
		push(t, ref, img)
	}
	good := reg.Ref("cfg/good:1")
	withConfig(good, v1.Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}, Env: []string{"PATH=/bin", "A=b=c"},
		User: "nobody", WorkingDir: "/tmp", ExposedPorts: map[string]struct{}{"8080/tcp": {}, "53/udp": {}}})
	big := reg.Ref("cfg/big:1")
	withConfig(big, v1.Config{Env: []string{"BLOB=" + strings.Repeat("x", 9<<10)}})
	bad := reg.Ref("cfg/bad:1")
	withConfig(bad, v1.Config{Env: []string{"=nameless"}})

	c := newClient(t, oci.Config{})
	img, err := c.Resolve(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	got, m := img.Config, img.Manifest()
	if got == nil || strings.Join(got.Entrypoint, "|") != "/bin/sh|-c" || strings.Join(got.Cmd, "|") != "echo hi" ||
		strings.Join(got.Env, "|") != "PATH=/bin|A=b=c" || got.User != "nobody" || got.WorkingDir != "/tmp" ||
		strings.Join(got.ExposedPorts, "|") != "53/udp|8080/tcp" || m.Config != got {
		t.Fatalf("config = %+v (manifest %+v), want the image's", got, m.Config)
	}
	if _, err := c.Resolve(context.Background(), big); !errors.Is(err, oci.ErrLimit) || !strings.Contains(err.Error(), "config") {
		t.Errorf("a 9 KiB environment: %v, want ErrLimit naming the config", err)
	}
	if _, err := c.Resolve(context.Background(), bad); !errors.Is(err, oci.ErrInvalidConfig) || !strings.Contains(err.Error(), "config.env[0]") {
		t.Errorf("a nameless env entry: %v, want ErrInvalidConfig naming config.env[0]", err)
	}
}
