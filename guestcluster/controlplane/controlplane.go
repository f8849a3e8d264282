package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Config says where a control plane keeps its state and listens.
type Config struct {
	// Dir holds etcd's data, the certificates and admin.kubeconfig.
	Dir string
	// Host is the address the API server, etcd and the node's kubelet API
	// listen on; 127.0.0.1 by default (a loopback address only).
	Host string
	// Port of the API server; 0 picks a free one.
	Port int
	// ClusterName names the cluster and its context in the kubeconfig.
	ClusterName string
	// Logger for the control plane's own messages (etcd's go to it at
	// warning level and above; kube-apiserver logs through klog).
	Logger *slog.Logger
	// ReadyTimeout bounds the wait for /readyz; 2 minutes by default.
	ReadyTimeout time.Duration
	// Member is this control plane's index among Members (default 1).
	// With several, each runs one member of one etcd cluster and an API
	// server of its own on it (stacked etcd, as kubeadm lays out a highly
	// available control plane): member i's etcd serves clients at
	// EtcdClientPort(EtcdPortBase, i) and peers at EtcdPeerPort(EtcdPortBase, i)
	// of Host, over TLS with client certificates (EtcdCertificate), and
	// finds member j at the same ports of Host: whoever runs the members
	// makes each one's ports reach the others (the hypervisor's paths
	// between control-plane VMs). A single member keeps etcd on free
	// ports of its own loopback, in plain HTTP.
	Member, Members int
	EtcdPortBase    int
}

// EtcdClientPort and EtcdPeerPort are member i's etcd ports.
func EtcdClientPort(base, i int) int { return base + 2*i }

// EtcdPeerPort: see EtcdClientPort.
func EtcdPeerPort(base, i int) int { return base + 2*i + 1 }

// DefaultEtcdPortBase is etcd's own client port: member 0 serves clients
// at 2379 and peers at 2380, as a lone etcd would.
const DefaultEtcdPortBase = 2379

// MemberName is member i's etcd name.
func MemberName(i int) string { return fmt.Sprintf("member-%d", i) }

// ControlPlane is a running guest control plane.
type ControlPlane struct {
	// Endpoint is the API server's URL, https://HOST:PORT.
	Endpoint string
	// AdminKubeconfig is a self-contained kubeconfig (CA and client
	// certificate inline) of the cluster's admin; also in
	// Dir/admin.kubeconfig.
	AdminKubeconfig []byte
	// NodeConfig is the client of the podvisor node.
	NodeConfig *rest.Config
	// KubeletTLS serves the node's kubelet API: its certificate for Host,
	// and client certificates required from the cluster's CA (the API
	// server's, for logs and exec).
	KubeletTLS *tls.Config
	// Host is the loopback address everything listens on.
	Host string

	done chan struct{}
	err  error
}

// Done is closed when the control plane has stopped; Err says why.
func (cp *ControlPlane) Done() <-chan struct{} { return cp.done }

// Err is why the control plane stopped (nil when its context ended).
func (cp *ControlPlane) Err() error { return cp.err }

// Start starts etcd and kube-apiserver and returns once the API server is
// ready. Ending ctx stops both; Done is closed when they have.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.Dir == "" {
		return nil, errors.New("controlplane: dir: required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if ip := net.ParseIP(cfg.Host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("controlplane: host %q: must be a loopback address", cfg.Host)
	}
	if cfg.ClusterName == "" {
		cfg.ClusterName = "guest"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 2 * time.Minute
	}
	if cfg.Members == 0 {
		cfg.Members = 1
	}
	if cfg.EtcdPortBase == 0 {
		cfg.EtcdPortBase = DefaultEtcdPortBase
	}
	if cfg.Member < 0 || cfg.Member >= cfg.Members {
		return nil, fmt.Errorf("controlplane: member %d: want 0 to %d", cfg.Member, cfg.Members-1)
	}
	if top := EtcdPeerPort(cfg.EtcdPortBase, cfg.Members-1); cfg.EtcdPortBase < 1 || top > 65535 {
		return nil, fmt.Errorf("controlplane: etcd port base %d: the members' ports must be 1 to 65535", cfg.EtcdPortBase)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	c, err := issueCerts(filepath.Join(cfg.Dir, "pki"), []string{cfg.Host, "localhost"}, cfg.Members > 1)
	if err != nil {
		return nil, fmt.Errorf("controlplane: certificates: %w", err)
	}
	port := cfg.Port
	if port == 0 {
		if port, err = FreePort(cfg.Host); err != nil {
			return nil, fmt.Errorf("controlplane: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var (
		etcd     *embed.Etcd
		etcdURLs string
	)
	if cfg.Members == 1 {
		etcd, etcdURLs, err = startEtcd(filepath.Join(cfg.Dir, "etcd"), cfg.Host)
	} else {
		etcd, etcdURLs, err = startEtcdMember(ctx, filepath.Join(cfg.Dir, "etcd"), cfg, c)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("controlplane: etcd: %w", err)
	}
	cp := &ControlPlane{
		Endpoint: "https://" + net.JoinHostPort(cfg.Host, strconv.Itoa(port)),
		Host:     cfg.Host,
		done:     make(chan struct{}),
	}
	apiDone := make(chan error, 1)
	go func() { apiDone <- runAPIServer(ctx, apiServerArgs(c, cfg.Host, port, etcdURLs)) }()
	go func() {
		var err error
		select {
		case err = <-apiDone:
			cancel()
		case <-ctx.Done():
			err = <-apiDone
		case err = <-etcd.Err():
			cancel()
			<-apiDone
		}
		etcd.Close()
		if ctx.Err() == nil || !errors.Is(err, context.Canceled) {
			cp.err = err
		}
		close(cp.done)
	}()

	if cp.AdminKubeconfig, err = kubeconfig(cfg.ClusterName, AdminUser, cp.Endpoint, c.caFile, c.adminCert, c.adminKey); err != nil {
		cancel()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "admin.kubeconfig"), cp.AdminKubeconfig, 0o600); err != nil {
		cancel()
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cp.NodeConfig = &rest.Config{
		Host: cp.Endpoint,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: c.caFile, CertFile: c.nodeCert, KeyFile: c.nodeKey,
		},
	}
	pair, err := tls.LoadX509KeyPair(c.kubeletSrvCert, c.kubeletSrv)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("controlplane: kubelet certificate: %w", err)
	}
	cp.KubeletTLS = &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    c.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
	if err := waitReady(ctx, cp, cfg.ReadyTimeout); err != nil {
		cancel()
		<-cp.done
		if cp.err != nil {
			err = fmt.Errorf("%w (kube-apiserver: %v)", err, cp.err)
		}
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cfg.Logger.Info("guest control plane ready", "endpoint", cp.Endpoint, "dir", cfg.Dir)
	return cp, nil
}

// waitReady polls /readyz with the admin's client until it answers 200.
func waitReady(ctx context.Context, cp *ControlPlane, timeout time.Duration) error {
	rc, err := clientcmd.RESTConfigFromKubeConfig(cp.AdminKubeconfig)
	if err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-cp.done:
			return errors.New("stopped before it was ready")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		resp, err := hc.Get(cp.Endpoint + "/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = resp.Status
	}
	return fmt.Errorf("API server at %s not ready within %s: %s", cp.Endpoint, timeout, last)
}

// startEtcd starts a single-member etcd on loopback ports and waits until
// it serves.
func startEtcd(dir, host string) (*embed.Etcd, string, error) {
	cport, err := FreePort(host)
	if err != nil {
		return nil, "", err
	}
	pport, err := FreePort(host)
	if err != nil {
		return nil, "", err
	}
	curl := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(cport))}
	purl := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(pport))}
	ec := embed.NewConfig()
	ec.Name = "guest"
	ec.Dir = dir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.LogLevel = "error"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		e.Close()
		return nil, "", errors.New("not ready within a minute")
	}
	return e, curl.String(), nil
}

// startEtcdMember starts this control plane's member of a cluster of
// cfg.Members and waits until the cluster has a quorum (the other members
// may start later: their VMs boot in any order).
func startEtcdMember(ctx context.Context, dir string, cfg Config, c *certs) (*embed.Etcd, string, error) {
	at := func(port int) url.URL {
		return url.URL{Scheme: "https", Host: net.JoinHostPort(cfg.Host, strconv.Itoa(port))}
	}
	ec := embed.NewConfig()
	ec.Name = MemberName(cfg.Member)
	ec.Dir = dir
	curl, purl := at(EtcdClientPort(cfg.EtcdPortBase, cfg.Member)), at(EtcdPeerPort(cfg.EtcdPortBase, cfg.Member))
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
	var peers, clients []string
	for i := range cfg.Members {
		p, cl := at(EtcdPeerPort(cfg.EtcdPortBase, i)), at(EtcdClientPort(cfg.EtcdPortBase, i))
		peers = append(peers, MemberName(i)+"="+p.String())
		clients = append(clients, cl.String())
	}
	ec.InitialCluster = strings.Join(peers, ",")
	// Members of different guest clusters never mix: the token is the
	// cluster's.
	ec.InitialClusterToken = "podvisor-guest-" + cfg.ClusterName
	tlsInfo := transport.TLSInfo{CertFile: c.etcdCert, KeyFile: c.etcdKey, TrustedCAFile: c.caFile, ClientCertAuth: true}
	ec.ClientTLSInfo, ec.PeerTLSInfo = tlsInfo, tlsInfo
	ec.LogLevel = "error"
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, "", err
	}
	wait := cfg.ReadyTimeout
	if wait < 5*time.Minute {
		wait = 5 * time.Minute
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-ctx.Done():
		e.Close()
		return nil, "", ctx.Err()
	case <-time.After(wait):
		e.Close()
		return nil, "", fmt.Errorf("member %s: no quorum of %d members within %s (are the other members' ports reachable?)", ec.Name, cfg.Members, wait)
	}
	return e, strings.Join(clients, ","), nil
}

// kubeconfig is a self-contained kubeconfig for user.
func kubeconfig(cluster, user, endpoint, caFile, certFile, keyFile string) ([]byte, error) {
	var err error
	read := func(p string) []byte {
		b, rerr := os.ReadFile(p)
		if rerr != nil && err == nil {
			err = rerr
		}
		return b
	}
	ca, cert, key := read(caFile), read(certFile), read(keyFile)
	if err != nil {
		return nil, fmt.Errorf("controlplane: kubeconfig: %w", err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters[cluster] = &clientcmdapi.Cluster{Server: endpoint, CertificateAuthorityData: ca}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	kc.Contexts[cluster] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user, Namespace: "default"}
	kc.CurrentContext = cluster
	return clientcmd.Write(*kc)
}

// FreePort asks the kernel for a free TCP port on host.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
