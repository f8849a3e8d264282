package vsphere

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/vim25/soap"

	"github.com/podvisor/podvisor/shared/config"
)

// DefaultKeepAlive is how often an idle session is checked and, if vCenter
// dropped it, logged in again. vCenter expires idle sessions after 30 min.
const DefaultKeepAlive = 5 * time.Minute

// Config says how to reach and log in to a vCenter (or the simulator).
type Config struct {
	// URL of the SDK endpoint, e.g. https://vc.example.com/sdk. govc's short
	// forms are accepted ("vc.example.com" means https://vc.example.com/sdk).
	// Credentials in the URL are used when Username/Password are empty.
	URL string
	// Username and Password log in; they override credentials in URL.
	Username string
	Password string
	// Insecure skips TLS certificate verification (GOVC_INSECURE): only
	// when asked for, never as a default.
	Insecure bool
	// CAFile lists PEM files of the CAs that sign vCenter's certificate
	// (GOVC_TLS_CA_CERTS, colon-separated like govc's).
	CAFile string
	// Thumbprint pins vCenter's certificate by its SHA-1 thumbprint as
	// vCenter shows it ("AB:CD:..."; PODVISOR_VCENTER_THUMBPRINT), for a
	// vCenter with a self-signed certificate.
	Thumbprint string
	// Datacenter is the datacenter to work in; empty means the only one
	// (an error when there are several).
	Datacenter string
	// KeepAlive is the interval of the idle-session check (default 5 min).
	KeepAlive time.Duration
	// CallTimeout bounds every vSphere API call, so that a vCenter that
	// stops answering fails a call instead of hanging its handler (default
	// DefaultCallTimeout; long waits use MaxWaitSeconds well below it).
	CallTimeout time.Duration
}

// DefaultCallTimeout bounds one vSphere call: long enough for a datastore
// upload of an image layer, far beyond any SOAP call's normal time.
const DefaultCallTimeout = 5 * time.Minute

// ConfigFromEnv reads govc's environment: GOVC_URL (may carry user:pass@),
// GOVC_USERNAME and GOVC_PASSWORD (override the URL's), GOVC_INSECURE (1, true,
// 0, false), GOVC_DATACENTER. GOVC_URL, GOVC_USERNAME and GOVC_PASSWORD each
// have a _FILE variant naming a file that holds the value, for secrets mounted
// into a container; setting both forms of one variable is an error. The
// result is validated.
func ConfigFromEnv() (Config, error) { return ConfigFrom(config.Env()) }

// ConfigFrom is ConfigFromEnv over any source of settings.
func ConfigFrom(src config.Source) (Config, error) {
	var errs []error
	get := func(name string) string {
		v, err := envOrFile(src, name)
		if err != nil {
			errs = append(errs, err)
		}
		return v
	}
	raw := get("GOVC_URL")
	user := get("GOVC_USERNAME")
	pass := get("GOVC_PASSWORD")
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}

	dc, _ := src("GOVC_DATACENTER")
	cfg := Config{Datacenter: dc}
	if raw == "" {
		return cfg, errors.New("vsphere config: GOVC_URL: required (or GOVC_URL_FILE)")
	}
	u, err := soap.ParseURL(raw)
	if err != nil {
		return cfg, fmt.Errorf("vsphere config: GOVC_URL: %v", err)
	}
	if u.User != nil {
		cfg.Username = u.User.Username()
		cfg.Password, _ = u.User.Password()
		u.User = nil // keep secrets out of a URL that ends up in logs
	}
	cfg.URL = u.String()
	if user != "" {
		cfg.Username = user
	}
	if pass != "" {
		cfg.Password = pass
	}
	cfg.CAFile, _ = src("GOVC_TLS_CA_CERTS")
	cfg.Thumbprint, _ = src("PODVISOR_VCENTER_THUMBPRINT")
	if v, _ := src("GOVC_INSECURE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, fmt.Errorf("vsphere config: GOVC_INSECURE: %q is not a boolean (use 1, true, 0 or false)", v)
		}
		cfg.Insecure = b
	}
	return cfg, cfg.Validate()
}

// envOrFile reads NAME or the file named by NAME_FILE.
func envOrFile(src config.Source, name string) (string, error) {
	v, hasV := src(name)
	f, hasF := src(name + "_FILE")
	switch {
	case hasV && v != "" && hasF && f != "":
		return "", fmt.Errorf("vsphere config: %s and %s_FILE are both set; use one", name, name)
	case hasF && f != "":
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("vsphere config: %s_FILE: %v", name, err)
		}
		// Secret files usually end with a newline nobody meant.
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return v, nil
}

// Validate reports every invalid field, each error naming it.
func (c Config) Validate() error {
	var errs []error
	u, err := c.endpoint()
	if err != nil {
		errs = append(errs, err)
	}
	user, pass := c.Username, c.Password
	if u != nil && u.User != nil {
		if user == "" {
			user = u.User.Username()
		}
		if pass == "" {
			pass, _ = u.User.Password()
		}
	}
	if user == "" {
		errs = append(errs, errors.New("vsphere config: Username: required (GOVC_USERNAME or user@ in GOVC_URL)"))
	}
	if pass == "" {
		errs = append(errs, errors.New("vsphere config: Password: required (GOVC_PASSWORD or user:pass@ in GOVC_URL)"))
	}
	if c.KeepAlive < 0 {
		errs = append(errs, fmt.Errorf("vsphere config: KeepAlive: %v is negative", c.KeepAlive))
	}
	return errors.Join(errs...)
}

func (c Config) endpoint() (*url.URL, error) {
	if c.URL == "" {
		return nil, errors.New("vsphere config: URL: required (GOVC_URL)")
	}
	u, err := soap.ParseURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("vsphere config: URL: %v", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("vsphere config: URL: scheme %q is not http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("vsphere config: URL: %q has no host", u.Redacted())
	}
	return u, nil
}

// credentials are the login credentials, fields first, then the URL's.
func (c Config) credentials(u *url.URL) *url.Userinfo {
	user, pass := c.Username, c.Password
	if u.User != nil {
		if user == "" {
			user = u.User.Username()
		}
		if pass == "" {
			pass, _ = u.User.Password()
		}
	}
	return url.UserPassword(user, pass)
}
