package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	certLifetime = 365 * 24 * time.Hour
	// renewBefore re-issues a certificate this long before it expires.
	renewBefore = 30 * 24 * time.Hour
)

// CA is a certificate authority kept in a directory.
type CA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

// LoadOrCreateCA reads ca.pem and ca-key.pem in dir, or creates them.
func LoadOrCreateCA(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	ca := &CA{dir: dir}
	cert, key, err := readPair(ca.CAFile(), filepath.Join(dir, "ca-key.pem"))
	switch {
	case err == nil && time.Until(cert.NotAfter) > renewBefore:
		ca.cert, ca.key = cert, key
	case err == nil || errors.Is(err, os.ErrNotExist):
		if err := ca.create(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("pki: CA in %s: %w", dir, err)
	}
	ca.pool = x509.NewCertPool()
	ca.pool.AddCert(ca.cert)
	return ca, nil
}

func (ca *CA) create() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "podvisor CA", Organization: []string{"podvisor"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("pki: CA certificate: %w", err)
	}
	ca.cert, _ = x509.ParseCertificate(der)
	ca.key = key
	return writePair(ca.CAFile(), filepath.Join(ca.dir, "ca-key.pem"), der, key)
}

// CAFile is the PEM file of the CA certificate: what clients trust.
func (ca *CA) CAFile() string { return filepath.Join(ca.dir, "ca.pem") }

// Pool is a certificate pool holding the CA.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// ClientTLS verifies servers against the CA.
func (ca *CA) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
}

// Issue returns the certificate and key files of server name, valid for
// hosts (IP addresses or DNS names), issuing them when needed.
func (ca *CA) Issue(name string, hosts ...string) (certFile, keyFile string, err error) {
	return ca.IssueAs(name, []string{"podvisor"}, hosts...)
}

// IssueAs is Issue with the subject's organizations given: a Kubernetes API
// server reads a client certificate's common name as the user and its
// organizations as the user's groups (system:masters, system:nodes).
func (ca *CA) IssueAs(name string, orgs []string, hosts ...string) (certFile, keyFile string, err error) {
	certFile = filepath.Join(ca.dir, name+".pem")
	keyFile = filepath.Join(ca.dir, name+"-key.pem")
	if cert, _, err := readPair(certFile, keyFile); err == nil && ca.current(cert, hosts) && slices.Equal(cert.Subject.Organization, orgs) {
		return certFile, keyFile, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("pki: %s key: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		// Servers and, for NATS routes, their peers as clients.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return "", "", fmt.Errorf("pki: %s certificate: %w", name, err)
	}
	if err := writePair(certFile, keyFile, der, key); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// current reports whether cert was signed by this CA, is not near expiry
// and names every host.
func (ca *CA) current(cert *x509.Certificate, hosts []string) bool {
	if cert.CheckSignatureFrom(ca.cert) != nil || time.Until(cert.NotAfter) < renewBefore {
		return false
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
				return false
			}
		} else if h != "" && !slices.Contains(cert.DNSNames, h) {
			return false
		}
	}
	return true
}

// ServerTLS is the TLS configuration of server name (see Issue).
func (ca *CA) ServerTLS(name string, hosts ...string) (*tls.Config, error) {
	certFile, keyFile, err := ca.Issue(name, hosts...)
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", name, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// Hosts lists the names a certificate for a listener on host needs:
// loopback always, and the host itself and this machine's name when it
// listens more widely.
func Hosts(host string) []string {
	out := []string{"127.0.0.1", "::1", "localhost"}
	if host != "" && host != "0.0.0.0" && host != "::" && !slices.Contains(out, host) {
		out = append(out, host)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		if name, err := os.Hostname(); err == nil && name != "" {
			out = append(out, name)
		}
		if addrs, err := net.InterfaceAddrs(); err == nil && (host == "0.0.0.0" || host == "::") {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() {
					out = append(out, n.IP.String())
				}
			}
		}
	}
	return out
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func readPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, err := x509.ParseECPrivateKey(kblock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return cert, key, nil
}

func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := writeAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SystemPoolWith is the system's trusted roots plus the PEM certificates of
// caFile (a private registry's or an installation's CA bundle); an empty
// caFile gives the system's roots alone. A file with no certificate in it
// is an error, not a silent fallback to the system's roots.
func SystemPoolWith(caFile string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile == "" {
		return pool, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA bundle: %w", err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("pki: CA bundle %s: no PEM certificate in it", caFile)
	}
	return pool, nil
}
