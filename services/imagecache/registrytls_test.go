package imagecache_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache"
	"github.com/podvisor/podvisor/services/imagecache/oci"
	imagelocality "github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/testenv"
)

// startTLSRegistry is the registry `podvisor up` runs: HTTPS with a
// certificate from the installation's CA, seeded with the sample images.
func startTLSRegistry(t *testing.T) (*ociregistry.Registry, *pki.CA) {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ca.ServerTLS("registry", pki.Hosts("127.0.0.1")...)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := ociregistry.Start(context.Background(), ociregistry.Config{TLS: srvTLS, RootCAs: ca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	if _, err := ociregistry.Seed(context.Background(), reg.Addr(), reg.Options()...); err != nil {
		t.Fatal(err)
	}
	return reg, ca
}

// TestRegistryCertificate: the image cache pulls from a TLS registry whose
// CA it is given (PODVISOR_REGISTRY_CA); without it, the pod's images fail
// at once with RegistryRefused naming the certificate, and no chain of the
// image is recorded ready.
func TestRegistryCertificate(t *testing.T) {
	reg, ca := startTLSRegistry(t)
	web := reg.Ref("podvisor/web:1.0")
	c, err := oci.New(oci.Config{CAFile: ca.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.Resolve(context.Background(), web)
	if err != nil {
		t.Fatalf("resolve with the CA: %v", err)
	}

	t.Run("untrusted", func(t *testing.T) {
		e := startEnv(t, nil)
		e.accept("untrusted", web)
		evs := e.WaitFor("images failed", 30*time.Second, func(evs []testenv.Seen) bool {
			return len(testenv.In[events.PodImagesFailed](t, evs, nil)) == 1
		})
		f := testenv.In[events.PodImagesFailed](t, evs, nil)[0]
		if f.Reason != imagecache.ReasonRegistryRefused || !strings.Contains(f.Message, "certificate") || f.Image != web {
			t.Fatalf("failure = %+v, want RegistryRefused naming the certificate of %s", f, web)
		}
		if r := readyFor(t, evs, "untrusted"); r != nil {
			t.Fatalf("pod.images.ready over an untrusted registry: %+v", r)
		}
		chains, err := imagelocality.NewReader(e.redis).Chains(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chains {
			for _, l := range img.Layers {
				if ch.ChainID == l.ChainID && ch.State == events.ChainStateReady {
					t.Errorf("chain %s on %s is ready although its registry was not trusted", ch.ChainID, ch.Datastore)
				}
			}
		}
	})

	t.Run("trusted", func(t *testing.T) {
		e := startEnv(t, func(c *imagecache.Config) { c.RegistryCAFile = ca.CAFile() })
		e.accept("trusted", web)
		evs := e.WaitFor("images settled", 30*time.Second, func(evs []testenv.Seen) bool {
			return readyFor(t, evs, "trusted") != nil || len(testenv.In[events.PodImagesFailed](t, evs, nil)) > 0
		})
		if f := testenv.In[events.PodImagesFailed](t, evs, nil); len(f) > 0 {
			t.Fatalf("pull with the registry's CA failed: %+v", *f[0])
		}
		if r := readyFor(t, evs, "trusted"); len(r.Containers) != 1 || r.Containers[0].Digest != img.Digest {
			t.Fatalf("images ready = %+v, want web's digest %s", r, img.Digest)
		}
	})
}
