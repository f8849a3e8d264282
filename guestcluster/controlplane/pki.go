package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podvisor/podvisor/shared/pki"
)

// certs are the files of the cluster's certificates.
type certs struct {
	caFile                     string
	pool                       *x509.CertPool
	serverCert, serverKey      string
	adminCert, adminKey        string
	nodeCert, nodeKey          string
	kubeletCliCert, kubeletKey string
	kubeletSrvCert, kubeletSrv string
	saKey                      string
	// etcdCert and etcdKey serve etcd's clients and peers and are its
	// client of the other members (a control plane of several members).
	etcdCert, etcdKey string
}

// Users of the cluster's certificates. The admin and the node are in
// system:masters: the node reads every secret, config map and service (its
// informers start on all of them) and binds pods, which the Node authorizer
// would refuse to a node.
const (
	AdminUser = "admin"
	NodeUser  = "podvisor-node"
)

// Certificate is one of the certificates a control plane runs with: its
// files are Name.pem and Name-key.pem in its pki directory.
type Certificate struct {
	Name  string
	Orgs  []string
	Hosts []string
}

// Certificates are those a control plane whose API server listens on
// hosts runs with. Whoever holds the cluster's CA key signs them: the
// control plane itself when its pki directory has ca-key.pem, or the
// supervisor ahead of time, which then hands the control plane these
// files and the CA certificate and keeps the key.
func Certificates(hosts ...string) []Certificate {
	masters := []string{"system:masters"}
	return []Certificate{
		{"kube-apiserver", []string{"podvisor"},
			append([]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"}, hosts...)},
		{AdminUser, masters, nil},
		{NodeUser, masters, nil},
		{"kube-apiserver-kubelet-client", masters, nil},
		{"podvisor-kubelet", []string{"podvisor"}, hosts},
	}
}

// EtcdCertificate is the certificate of a member of a control plane of
// several members: it serves etcd's clients and peers on hosts and is the
// member's client of the others' (and the API server's client of etcd).
// Signed ahead like the others, as etcd.pem and etcd-key.pem; a control
// plane of one member does without it (its etcd serves only its own
// loopback, in plain HTTP).
func EtcdCertificate(hosts ...string) Certificate {
	return Certificate{Name: "etcd", Orgs: []string{"podvisor"}, Hosts: hosts}
}

func issueCerts(dir string, hosts []string, etcd bool) (*certs, error) {
	c := &certs{caFile: filepath.Join(dir, "ca.pem")}
	files := []*string{&c.serverCert, &c.serverKey, &c.adminCert, &c.adminKey, &c.nodeCert, &c.nodeKey,
		&c.kubeletCliCert, &c.kubeletKey, &c.kubeletSrvCert, &c.kubeletSrv}
	_, keyErr := os.Stat(filepath.Join(dir, "ca-key.pem"))
	_, caErr := os.Stat(c.caFile)
	if errors.Is(keyErr, os.ErrNotExist) && caErr == nil {
		// Signed ahead: the CA's key stays with whoever signed them.
		for i, s := range Certificates(hosts...) {
			*files[2*i], *files[2*i+1] = filepath.Join(dir, s.Name+".pem"), filepath.Join(dir, s.Name+"-key.pem")
			for _, f := range []string{*files[2*i], *files[2*i+1]} {
				if _, err := os.Stat(f); err != nil {
					return nil, fmt.Errorf("%s without ca-key.pem: the certificates must be signed ahead: %w", dir, err)
				}
			}
		}
		if etcd {
			c.etcdCert, c.etcdKey = filepath.Join(dir, "etcd.pem"), filepath.Join(dir, "etcd-key.pem")
			// The members' API servers must accept each other's
			// service account tokens: one signing key, handed out.
			for _, f := range []string{c.etcdCert, c.etcdKey, filepath.Join(dir, "sa-key.pem")} {
				if _, err := os.Stat(f); err != nil {
					return nil, fmt.Errorf("%s without ca-key.pem: the etcd member's certificate and the service account key must be given: %w", dir, err)
				}
			}
		}
		b, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, err
		}
		if c.pool = x509.NewCertPool(); !c.pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s: no certificate", c.caFile)
		}
	} else {
		ca, err := pki.LoadOrCreateCA(dir)
		if err != nil {
			return nil, err
		}
		c.caFile, c.pool = ca.CAFile(), ca.Pool()
		for i, s := range Certificates(hosts...) {
			if *files[2*i], *files[2*i+1], err = ca.IssueAs(s.Name, s.Orgs, s.Hosts...); err != nil {
				return nil, err
			}
		}
		if etcd {
			e := EtcdCertificate(hosts...)
			if c.etcdCert, c.etcdKey, err = ca.IssueAs(e.Name, e.Orgs, e.Hosts...); err != nil {
				return nil, err
			}
		}
	}
	var err error
	if c.saKey, err = serviceAccountKey(dir); err != nil {
		return nil, err
	}
	return c, nil
}

// serviceAccountKey keeps the key the API server signs service account
// tokens with (kube-apiserver requires one even when no token is mounted).
func serviceAccountKey(dir string) (string, error) {
	path := filepath.Join(dir, "sa-key.pem")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("service account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("service account key: %w", err)
	}
	if err := os.WriteFile(path+".tmp", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", err
	}
	return path, os.Rename(path+".tmp", path)
}
