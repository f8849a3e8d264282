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
	ca                         *pki.CA
	serverCert, serverKey      string
	adminCert, adminKey        string
	nodeCert, nodeKey          string
	kubeletCliCert, kubeletKey string
	kubeletSrvCert, kubeletSrv string
	saKey                      string
}

// Users of the cluster's certificates. The admin and the node are in
// system:masters: the node reads every secret, config map and service (its
// informers start on all of them) and binds pods, which the Node authorizer
// would refuse to a node.
const (
	AdminUser = "admin"
	NodeUser  = "podvisor-node"
)

func issueCerts(dir string, hosts []string) (*certs, error) {
	ca, err := pki.LoadOrCreateCA(dir)
	if err != nil {
		return nil, err
	}
	c := &certs{ca: ca}
	masters := []string{"system:masters"}
	steps := []struct {
		cert, key *string
		name      string
		orgs      []string
		hosts     []string
	}{
		{&c.serverCert, &c.serverKey, "kube-apiserver", []string{"podvisor"},
			append([]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"}, hosts...)},
		{&c.adminCert, &c.adminKey, AdminUser, masters, nil},
		{&c.nodeCert, &c.nodeKey, NodeUser, masters, nil},
		{&c.kubeletCliCert, &c.kubeletKey, "kube-apiserver-kubelet-client", masters, nil},
		{&c.kubeletSrvCert, &c.kubeletSrv, "podvisor-kubelet", []string{"podvisor"}, hosts},
	}
	for _, s := range steps {
		if *s.cert, *s.key, err = ca.IssueAs(s.name, s.orgs, s.hosts...); err != nil {
			return nil, err
		}
	}
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
