package oci

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/podvisor/podvisor/events"
	imagelocality "github.com/podvisor/podvisor/shared/imagemeta"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/registryerr"
)

// Error classes. Callers test with errors.Is and map them to reasons.
var (
	ErrInvalidReference    = errors.New("invalid image reference")
	ErrImageNotFound       = errors.New("image not found")
	ErrUnauthorized        = errors.New("registry refused access")
	ErrRegistryUnavailable = errors.New("registry unavailable")
	// ErrDigestMismatch: the registry served bytes other than those asked
	// for (a layer or a manifest whose digest is not the one named).
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrLimit: the image is over one of the Limits (the message names it).
	ErrLimit = errors.New("image over a limit")
	// ErrRefused: the registry asked for something the policy forbids
	// (a redirect to another host).
	ErrRefused = errors.New("registry request refused")
	// ErrUntrusted: the registry's TLS certificate does not verify against
	// the system's roots and the CA bundle (Config.CAFile). It is an
	// ErrRefused: no retry makes a certificate trusted.
	ErrUntrusted = fmt.Errorf("%w: registry certificate not trusted", ErrRefused)
	// ErrInvalidConfig: the image's config says to run something no
	// container can (an env entry without a name, a relative working
	// directory).
	ErrInvalidConfig = errors.New("invalid image config")
)

// Limits protect the image cache from hostile or broken registries and
// images. Zero fields take the defaults.
type Limits struct {
	// MaxManifestBytes caps a manifest or index (default 4 MiB).
	MaxManifestBytes int64
	// MaxLayers caps an image's layer count (default 128).
	MaxLayers int
	// MaxLayerBytes caps one layer's compressed size (default 8 GiB).
	MaxLayerBytes int64
	// MaxUncompressedBytes caps one layer's uncompressed size (default 16 GiB).
	MaxUncompressedBytes int64
	// MaxRatio caps the uncompressed/compressed ratio (default 200): the
	// stream stops once it has produced more than MaxRatio times the
	// compressed bytes read so far plus RatioFloor (default 16 MiB).
	MaxRatio   int
	RatioFloor int64
}

// Defaults of Limits.
const (
	DefaultMaxManifestBytes     = 4 << 20
	DefaultMaxLayers            = 128
	DefaultMaxLayerBytes        = 8 << 30
	DefaultMaxUncompressedBytes = 16 << 30
	DefaultMaxRatio             = 200
	DefaultRatioFloor           = 16 << 20
)

func (l Limits) withDefaults() Limits {
	if l.MaxManifestBytes <= 0 {
		l.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if l.MaxLayers <= 0 {
		l.MaxLayers = DefaultMaxLayers
	}
	if l.MaxLayerBytes <= 0 {
		l.MaxLayerBytes = DefaultMaxLayerBytes
	}
	if l.MaxUncompressedBytes <= 0 {
		l.MaxUncompressedBytes = DefaultMaxUncompressedBytes
	}
	if l.MaxRatio <= 0 {
		l.MaxRatio = DefaultMaxRatio
	}
	if l.RatioFloor <= 0 {
		l.RatioFloor = DefaultRatioFloor
	}
	return l
}

// Config tunes the registry client.
type Config struct {
	// Insecure lists registries (host[:port]) spoken to in plain HTTP.
	// Every other registry is spoken to in HTTPS with its certificate
	// verified, except a loopback registry that does not speak TLS at all
	// (a development registry on this machine): go-containerregistry falls
	// back to HTTP for those, and the policy allows the fallback only when
	// HTTPS failed for another reason than a certificate that does not
	// verify.
	Insecure []string
	// CAFile is a PEM bundle of CA certificates trusted beside the
	// system's roots (a private registry's CA, the CA of `podvisor up`'s
	// own registry).
	CAFile string
	// Keychain finds credentials; nil means AuthFile (when set), then
	// authn.DefaultKeychain.
	Keychain authn.Keychain
	// AuthFile is a docker config file (config.json: auths, credential
	// helpers) with the credentials of private registries.
	AuthFile string
	// RedirectHosts are the hosts a registry may redirect to (blob storage,
	// CDNs); "*" allows any. Redirects within the registry's host are always
	// followed.
	RedirectHosts []string
	// Platform picks the image of an index: "os/arch[/variant]"
	// (default linux/amd64).
	Platform string
	// Limits cap what a registry may make the cache read and write.
	Limits Limits
	// Timeouts bound each registry request.
	Timeouts Timeouts
	// Transport, when set, carries the registry traffic (Timeouts.Connect
	// and Timeouts.Handshake are then its own business).
	Transport http.RoundTripper
	// Retries of a temporary registry failure inside one call (0 = 2), with
	// RetryDelay (0 = 200ms) doubling between them. Longer waits belong to
	// the bus's redelivery backoff, not to a handler.
	Retries    int
	RetryDelay time.Duration
}

// Timeouts bound each registry request, so that a registry that accepts
// connections and never answers fails a pull (ErrRegistryUnavailable,
// "timed out after") instead of holding it until the caller gives up. Zero
// fields take the defaults.
type Timeouts struct {
	// Connect bounds a TCP connection (default 10s).
	Connect time.Duration
	// Handshake bounds a TLS handshake (default 10s).
	Handshake time.Duration
	// Header bounds the wait for a response header, from the moment the
	// request is made (default 30s).
	Header time.Duration
	// Idle bounds each pause of a response body (default 30s): a body
	// that stalls fails, a slow one that keeps arriving does not.
	Idle time.Duration
}

// Defaults of Timeouts.
const (
	DefaultConnectTimeout   = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultHeaderTimeout    = 30 * time.Second
	DefaultIdleTimeout      = 30 * time.Second
)

func (t Timeouts) withDefaults() Timeouts {
	t.Connect = cmp.Or(t.Connect, DefaultConnectTimeout)
	t.Handshake = cmp.Or(t.Handshake, DefaultHandshakeTimeout)
	t.Header = cmp.Or(t.Header, DefaultHeaderTimeout)
	t.Idle = cmp.Or(t.Idle, DefaultIdleTimeout)
	return t
}

// Client talks to registries.
type Client struct {
	cfg  Config
	opts []remote.Option
}

// New returns a registry client.
func New(cfg Config) (*Client, error) {
	cfg.Limits = cfg.Limits.withDefaults()
	cfg.Timeouts = cfg.Timeouts.withDefaults()
	if cfg.Platform == "" {
		cfg.Platform = "linux/amd64"
	}
	platform, err := v1.ParsePlatform(cfg.Platform)
	if err != nil || platform.OS == "" || platform.Architecture == "" {
		return nil, fmt.Errorf("registry platform %q: want os/arch[/variant] such as linux/amd64", cfg.Platform)
	}
	if cfg.Keychain == nil {
		cfg.Keychain = authn.DefaultKeychain
		if cfg.AuthFile != "" {
			fk, err := fileKeychain(cfg.AuthFile)
			if err != nil {
				return nil, err
			}
			cfg.Keychain = authn.NewMultiKeychain(fk, authn.DefaultKeychain)
		}
	}
	if cfg.Retries == 0 {
		cfg.Retries = 2
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = 200 * time.Millisecond
	}
	base := cfg.Transport
	if base == nil {
		roots, err := pki.SystemPoolWith(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry CA: %w", err)
		}
		t := remote.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		t.DialContext = boundedDial(cfg.Timeouts.Connect)
		t.TLSHandshakeTimeout = cfg.Timeouts.Handshake
		base = t
	}
	opts := []remote.Option{
		remote.WithAuthFromKeychain(cfg.Keychain),
		remote.WithRetryBackoff(remote.Backoff{Duration: cfg.RetryDelay, Factor: 2, Steps: cfg.Retries + 1}),
		remote.WithTransport(&policy{base: base, insecure: cfg.Insecure, redirects: cfg.RedirectHosts, maxManifest: cfg.Limits.MaxManifestBytes, untrusted: map[string]error{}, timeouts: cfg.Timeouts}),
		remote.WithPlatform(*platform),
	}
	return &Client{cfg: cfg, opts: opts}, nil
}

// Image is a resolved image.
type Image struct {
	// Ref is the reference as given.
	Ref string
	// Digest is the manifest digest.
	Digest string
	// Layers are the layers base first, with chainIDs.
	Layers []imagelocality.Layer
	// Config is how the image's containers run; nil when the image's
	// config says nothing about it.
	Config *events.ImageConfig

	// repo is where Fetch gets the layers: each fetch makes its own remote
	// layer with the caller's context (an Image outlives the request that
	// resolved it).
	repo name.Repository
}

// Manifest is the image as the image cache stores it.
func (i *Image) Manifest() imagelocality.Manifest {
	return imagelocality.Manifest{Digest: i.Digest, Image: i.Ref, Layers: slices.Clone(i.Layers), Config: i.Config}
}

// Size is the sum of the compressed layer sizes.
func (i *Image) Size() int64 { return i.Manifest().Size() }

// ParseReference parses an image reference the way Resolve does.
func (c *Client) ParseReference(ref string) (name.Reference, error) {
	var nopts []name.Option
	if r, err := name.ParseReference(ref); err == nil && slices.Contains(c.cfg.Insecure, r.Context().RegistryStr()) {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidReference, ref, err)
	}
	return r, nil
}

// Resolve finds the image's digest and layers.
func (c *Client) Resolve(ctx context.Context, ref string) (*Image, error) {
	r, err := c.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	opts := append([]remote.Option{remote.WithContext(ctx)}, c.opts...)
	img, err := remote.Image(r, opts...)
	if err != nil {
		return nil, classify(ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, classify(ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, classify(ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, classify(ref, err)
	}
	if len(layers) > c.cfg.Limits.MaxLayers {
		return nil, fmt.Errorf("image %s: %w: %d layers, over the layer count cap of %d", ref, ErrLimit, len(layers), c.cfg.Limits.MaxLayers)
	}
	if len(layers) != len(cf.RootFS.DiffIDs) {
		return nil, fmt.Errorf("image %s: %w: %d layers but %d diffIDs in its config", ref, ErrDigestMismatch, len(layers), len(cf.RootFS.DiffIDs))
	}
	out := &Image{Ref: ref, Digest: d.String(), repo: r.Context()}
	if out.Config, err = runConfig(ref, cf.Config); err != nil {
		return nil, err
	}
	diffIDs := make([]string, len(layers))
	for i, l := range layers {
		ld, err := l.Digest()
		if err != nil {
			return nil, classify(ref, err)
		}
		size, err := l.Size()
		if err != nil {
			return nil, classify(ref, err)
		}
		diffIDs[i] = cf.RootFS.DiffIDs[i].String()
		out.Layers = append(out.Layers, imagelocality.Layer{Digest: ld.String(), DiffID: diffIDs[i], Size: size})
	}
	for i, id := range ChainIDs(diffIDs) {
		out.Layers[i].ChainID = id
	}
	return out, nil
}

// runConfig takes from an image config what decides how its containers run,
// refusing a config over events.MaxImageConfigBytes (ErrLimit) or one no
// container could run with (ErrInvalidConfig).
func runConfig(ref string, c v1.Config) (*events.ImageConfig, error) {
	out := &events.ImageConfig{
		Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, User: c.User, WorkingDir: c.WorkingDir,
	}
	for p := range c.ExposedPorts {
		out.ExposedPorts = append(out.ExposedPorts, p)
	}
	slices.Sort(out.ExposedPorts)
	if out.Size() > events.MaxImageConfigBytes {
		return nil, fmt.Errorf("image %s: %w: its config's command, environment and ports take %d bytes, over the cap of %d",
			ref, ErrLimit, out.Size(), events.MaxImageConfigBytes)
	}
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("image %s: %w: %v", ref, ErrInvalidConfig, err)
	}
	if out.Size() == 0 {
		return nil, nil
	}
	return out, nil
}

// ChainIDs computes the OCI chainIDs of a list of diffIDs (base first).
func ChainIDs(diffIDs []string) []string {
	out := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		if i == 0 {
			out[i] = d
			continue
		}
		sum := sha256.Sum256([]byte(out[i-1] + " " + d))
		out[i] = "sha256:" + hex.EncodeToString(sum[:])
	}
	return out
}

// classify maps registry and network errors to the package's classes.
func classify(ref string, err error) error {
	if err == nil {
		return nil
	}
	// First: a certificate failure comes wrapped in a url.Error, which is a
	// net.Error, and is no reason to retry; the plain-HTTP attempt the
	// policy refused after it only repeats it.
	if cerr := certificateError(err); cerr != nil {
		return fmt.Errorf("image %s: %w: %v (trust its CA with PODVISOR_REGISTRY_CA)", ref, ErrUntrusted, cerr)
	}
	if errors.Is(err, ErrLimit) || errors.Is(err, ErrRefused) || errors.Is(err, ErrRegistryUnavailable) {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		err = registryerr.Brief(err)
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %s: %v", ErrImageNotFound, ref, err)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w: %s: %v", ErrUnauthorized, ref, err)
			}
		}
		switch {
		case terr.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %s: %v", ErrImageNotFound, ref, err)
		case terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: %s: %v", ErrUnauthorized, ref, err)
		case terr.StatusCode >= 500 || terr.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("%w: %s: %v", ErrRegistryUnavailable, ref, err)
		}
		return fmt.Errorf("image %s: %v", ref, err)
	}
	var nerr net.Error
	var operr *net.OpError
	if errors.As(err, &nerr) || errors.As(err, &operr) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), "no such host") {
		return fmt.Errorf("%w: %s: %v", ErrRegistryUnavailable, ref, err)
	}
	// A manifest asked for by digest that hashes to another digest
	// (go-containerregistry says so in a plain error): the registry serves
	// the wrong bytes, and asking again gets the same ones.
	if strings.Contains(err.Error(), "does not match requested digest") {
		return fmt.Errorf("%w: %s: the registry served another manifest: %v", ErrDigestMismatch, ref, err)
	}
	if strings.Contains(err.Error(), "error verifying") {
		return fmt.Errorf("%w: %s: %v", ErrDigestMismatch, ref, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("image %s: %w", ref, err)
}
