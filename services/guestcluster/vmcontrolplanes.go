package guestcluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/record"
)

// GuestPorts is the network path between this machine and a VM's guest:
// on the simulator, the hypervisor's own (shared/sim/guest: Publish and
// Reach, and a balancer in front of several guests); on vSphere it would
// be a load balancer in front of the VMs and a route from the VMs'
// network to the supervisor. VMs are named by their vCenter name
// (events.NativeVMName of the record's UID).
type GuestPorts interface {
	// Publish makes the guest's loopback port reachable from this machine
	// and returns the address (host:port) to dial: at, when at is not ""
	// and free (a control plane published again after a restart keeps the
	// address its clients' kubeconfigs name), else another.
	Publish(ctx context.Context, vm string, port int, at string) (string, error)
	// Reach makes target, an address of this machine, reachable inside
	// the guest at its loopback port port, in every boot of it.
	Reach(ctx context.Context, vm string, port int, target string) error
	// Balance makes port of the guests of vms reachable at one address of
	// this machine, named name: each connection goes to a guest that
	// accepts it (one that is off or does not listen is passed over).
	// Called again with the same name, it keeps the address and follows
	// the new list; made anew, it takes at as Publish does.
	Balance(ctx context.Context, name string, vms []string, port int, at string) (string, error)
	// Release drops what Publish and Reach made for the VM, or what
	// Balance made under that name.
	Release(name string)
}

// VMControlPlanes runs each guest cluster's control plane in native VMs of
// its own, <cluster>-control-plane-<i> for i below spec.controlPlane.replicas
// (ControlPlaneVM, the image ControlPlaneImage): each VM's user data
// (ControlPlaneUserData) starts podvisor-guest on the VM's data disk as
// member i. The supervisor keeps the cluster's CA in
// Dir/<namespace>.<name>/pki and signs every certificate itself; the
// guests reach NATS through the address Ports makes reachable in them
// (their loopback, at the port of NATSURL).
//
// One VM: its API server is the cluster's endpoint, through the port
// Ports publishes. Several (a highly available control plane, stacked
// etcd as kubeadm lays it out): each VM runs an etcd member and an API
// server on it; each member's etcd ports are published and reached in
// every other member's guest at the same loopback ports (EtcdClientPort,
// EtcdPeerPort), and the endpoint is a balancer in front of the members'
// API servers (Ports.Balance), so the cluster answers while a majority
// runs. The podvisor node runs in the member holding its Lease.
//
// Readiness is every member's /readyz and the podvisor node, asked of the
// API servers; a control plane that stops answering is started again by
// its VM (its declared power state), not by this process.
type VMControlPlanes struct {
	Dir string
	// NATSURL and NATSCA are the supervisor's NATS as this machine
	// reaches it; NATSURL's host must be a loopback address (the guest
	// dials the same URL on its own loopback).
	NATSURL, NATSCA string
	// DiskSize is the etcd data disk's size (default 1Gi).
	DiskSize     string
	ReadyTimeout time.Duration
	Ports        GuestPorts
	Logger       *slog.Logger

	out    *bus.Emitter
	vms    *record.Store[events.VMRecord]
	images *record.Store[events.VMImageRecord]

	mu      sync.Mutex
	planes  map[string]plane      // by namespace/cluster
	workers map[string]workerPath // by namespace/cluster/worker VM
	// connecting is held while connectWorkers runs.
	connecting sync.Mutex
}

// plane is what Ensure made for a control plane: its VMs' guests and the
// address of its API (the one VM's published port, or the balancer).
type plane struct {
	guests []string
	api    string
}

// id changes when the control plane's guests do.
func (p plane) id() string { return strings.Join(p.guests, ",") }

var _ ControlPlanes = (*VMControlPlanes)(nil)

func (v *VMControlPlanes) dir(ns, name string) string { return filepath.Join(v.Dir, ns+"."+name) }

// controlPlaneVMName is the name of a guest cluster's control-plane VM i.
func controlPlaneVMName(cluster string, i int) string {
	return fmt.Sprintf("%s-control-plane-%d", cluster, i)
}

// balancerName names the balancer in front of a control plane's API
// servers.
func balancerName(ns, name string) string { return "guestcluster/" + ns + "/" + name + "/api" }

// Ensure declares the control-plane VMs that are not, waits for them to
// run, opens the paths to, from and between their guests and waits for
// every member's API server to be ready and the podvisor node registered.
func (v *VMControlPlanes) Ensure(ctx context.Context, cp ControlPlane) (Endpoint, error) {
	key := cp.Namespace + "/" + cp.Name
	n := max(cp.Replicas, 1)
	timeout := v.ReadyTimeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	natsHost, natsPort, err := loopbackHostPort(v.NATSURL)
	if err != nil {
		return Endpoint{}, bus.Permanent(fmt.Errorf("control plane %s in a VM: NATS URL: %w", key, err))
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(v.dir(cp.Namespace, cp.Name), "pki"))
	if err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: CA: %w", key, err)
	}
	// Every VM is declared before any is waited for: the members of a
	// control plane of several form their etcd cluster together.
	for i := range n {
		vmName := controlPlaneVMName(cp.Name, i)
		rec, _, err := v.vms.Get(ctx, events.VMRecordKey(cp.Namespace, vmName))
		if err != nil {
			return Endpoint{}, err
		}
		if rec != nil && !rec.DeletionRequestedAt.IsZero() {
			return Endpoint{}, bus.RetryAfter(fmt.Errorf("control-plane VM %s/%s is still being deleted", cp.Namespace, vmName), workerRetry)
		}
		// Declared once: the user data holds a freshly minted identity
		// each time, and a VM's user data is read at its boots anyway.
		if rec == nil {
			if err := v.declare(ctx, cp, ca, i, n); err != nil {
				return Endpoint{}, err
			}
		}
	}
	guests, err := v.members(ctx, cp.Namespace, cp.Name, n)
	if err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: %w", key, err)
	}
	pl := plane{guests: guests}
	apis := make([]string, n)
	for i, g := range guests {
		if g == "" {
			continue // not running: connected by a later Ensure (the resync)
		}
		if err := v.Ports.Reach(ctx, g, natsPort, net.JoinHostPort(natsHost, fmt.Sprint(natsPort))); err != nil {
			return Endpoint{}, fmt.Errorf("control plane %s: NATS in the guest: %w", key, err)
		}
		// The one VM's port is the cluster's endpoint: at the address
		// recorded, where it is free.
		at := ""
		if n == 1 {
			at = hostPortOf(cp.Endpoint)
		}
		if apis[i], err = v.Ports.Publish(ctx, g, ControlPlaneAPIPort, at); err != nil {
			return Endpoint{}, fmt.Errorf("control plane %s: publish the API port: %w", key, err)
		}
	}
	pl.api = apis[0]
	if n > 1 {
		if err := v.connectMembers(ctx, guests); err != nil {
			return Endpoint{}, fmt.Errorf("control plane %s: %w", key, err)
		}
		running := slices.DeleteFunc(slices.Clone(guests), func(g string) bool { return g == "" })
		if pl.api, err = v.Ports.Balance(ctx, balancerName(cp.Namespace, cp.Name), running, ControlPlaneAPIPort, hostPortOf(cp.Endpoint)); err != nil {
			return Endpoint{}, fmt.Errorf("control plane %s: the API servers' balancer: %w", key, err)
		}
	}
	v.mu.Lock()
	if v.planes == nil {
		v.planes, v.workers = map[string]plane{}, map[string]workerPath{}
	}
	v.planes[key] = pl
	v.mu.Unlock()
	certFile, keyFile, err := ca.IssueAs("admin", []string{"system:masters"})
	if err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: admin certificate: %w", key, err)
	}
	ep := Endpoint{URL: "https://" + pl.api}
	if ep.Kubeconfig, err = adminKubeconfig(cp.Name, ep.URL, ca.CAFile(), certFile, keyFile); err != nil {
		return Endpoint{}, err
	}
	if err := waitReady(ctx, ep.URL, apis, ca, certFile, keyFile); err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: %w", key, err)
	}
	return ep, nil
}

// memberGrace is how long Ensure waits for the last members' VMs once a
// majority runs: the cluster works with a majority, and a member that
// runs later is connected by the next Ensure (the resync).
const memberGrace = 15 * time.Second

// members waits for the control-plane VMs to run (their records Ready and
// PoweredOn on a host) and returns their guests' VM names: all of them, or
// once a majority has run for memberGrace, those that run ("" for the
// others).
func (v *VMControlPlanes) members(ctx context.Context, ns, name string, n int) ([]string, error) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var majority time.Time
	for {
		guests := make([]string, n)
		up := 0
		var waiting []string
		for i := range n {
			vmName := controlPlaneVMName(name, i)
			r, _, err := v.vms.Get(ctx, events.VMRecordKey(ns, vmName))
			switch {
			case err != nil:
				waiting = append(waiting, fmt.Sprintf("%s: %v", vmName, err))
			case r == nil:
				waiting = append(waiting, vmName+": not recorded yet")
			case r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn && r.Status.Host != "":
				guests[i] = events.NativeVMName(r.UID)
				up++
			default:
				waiting = append(waiting, fmt.Sprintf("%s: %s, %s", vmName, r.Status.Phase, orNone(r.Status.PowerState)))
			}
		}
		if up == n {
			return guests, nil
		}
		if up > n/2 {
			if majority.IsZero() {
				majority = time.Now()
			} else if time.Since(majority) >= memberGrace {
				v.Logger.Warn("control plane: going on with a majority of its VMs", "guestcluster", ns+"/"+name,
					"running", up, "of", n, "waiting", strings.Join(waiting, "; "))
				return guests, nil
			}
		} else {
			majority = time.Time{}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d control-plane VMs run (%s): %w", up, n, strings.Join(waiting, "; "), ctx.Err())
		case <-tick.C:
		}
	}
}

// connectMembers makes each member's etcd ports reach it from every other
// member's guest, at the same loopback ports there.
func (v *VMControlPlanes) connectMembers(ctx context.Context, guests []string) error {
	for i, gi := range guests {
		if gi == "" {
			continue
		}
		for _, port := range []int{EtcdClientPort(i), EtcdPeerPort(i)} {
			addr, err := v.Ports.Publish(ctx, gi, port, "")
			if err != nil {
				return fmt.Errorf("publish etcd port %d of member %d: %w", port, i, err)
			}
			for j, gj := range guests {
				if j == i || gj == "" {
					continue
				}
				if err := v.Ports.Reach(ctx, gj, port, addr); err != nil {
					return fmt.Errorf("reach member %d's etcd port %d from member %d: %w", i, port, j, err)
				}
			}
		}
	}
	return nil
}

// declare publishes the declaration of control-plane VM i of n once its
// image is declared (`up` declares it in the background).
func (v *VMControlPlanes) declare(ctx context.Context, cp ControlPlane, ca *pki.CA, i, n int) error {
	if err := v.imageReady(ctx); err != nil {
		return err
	}
	read := func(p string) ([]byte, error) {
		if p == "" {
			return nil, nil
		}
		return os.ReadFile(p)
	}
	caCert, err := read(ca.CAFile())
	if err != nil {
		return err
	}
	// The control plane's own certificates, signed here: the CA's key
	// stays on this machine.
	certs := map[string][]byte{}
	for _, c := range controlPlaneCerts(n > 1) {
		certFile, keyFile, err := ca.IssueAs(c.name, c.orgs, c.hosts...)
		if err != nil {
			return err
		}
		for f, p := range map[string]string{c.name + ".pem": certFile, c.name + "-key.pem": keyFile} {
			if certs[f], err = read(p); err != nil {
				return err
			}
		}
	}
	if n > 1 {
		// The members' API servers sign and accept the same service
		// account tokens.
		if certs["sa-key.pem"], err = serviceAccountKey(filepath.Join(v.dir(cp.Namespace, cp.Name), "pki")); err != nil {
			return err
		}
	}
	creds, err := read(cp.Creds)
	if err != nil {
		return err
	}
	natsCA, err := read(v.NATSCA)
	if err != nil {
		return err
	}
	ud, err := ControlPlaneUserData(ControlPlaneBoot{Namespace: cp.Namespace, Name: cp.Name, Version: cp.Version,
		CACert: caCert, Certs: certs, NATSURL: v.NATSURL, NATSCreds: creds, NATSCA: natsCA, RemoteWorkers: true,
		Member: i, Members: n})
	if err != nil {
		return bus.Permanent(err)
	}
	size := v.DiskSize
	if size == "" {
		size = "1Gi"
	}
	vm := ControlPlaneVM(cp.Namespace, cp.Name, cp.ClassName, cp.Network, size, i, ud)
	return v.out.Emit(ctx, nil, &events.VMDeclared{VM: vm})
}

// controlPlaneCerts are the certificates of a control plane whose API
// server listens on the guest's loopback: those of
// guestcluster/controlplane.Certificates("127.0.0.1", "localhost"), the
// same names, groups and hosts (that module is outside the workspace),
// and with etcd (several members) its EtcdCertificate.
func controlPlaneCerts(etcd bool) []struct {
	name        string
	orgs, hosts []string
} {
	masters := []string{"system:masters"}
	certs := []struct {
		name        string
		orgs, hosts []string
	}{
		{"kube-apiserver", []string{"podvisor"}, []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1", "127.0.0.1", "localhost"}},
		{"admin", masters, nil},
		{"podvisor-node", masters, nil},
		{"kube-apiserver-kubelet-client", masters, nil},
		{"podvisor-kubelet", []string{"podvisor"}, []string{"127.0.0.1", "localhost"}},
	}
	if etcd {
		certs = append(certs, struct {
			name        string
			orgs, hosts []string
		}{"etcd", []string{"podvisor"}, []string{"127.0.0.1", "localhost"}})
	}
	return certs
}

// serviceAccountKey is the key a control plane's API servers sign service
// account tokens with (PEM), made once in dir and kept.
func serviceAccountKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, "sa-key.pem")
	if b, err := os.ReadFile(path); err == nil {
		return b, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return nil, err
	}
	return b, os.Rename(path+".tmp", path)
}

// imageReady waits for the control-plane image to be declared and ready.
func (v *VMControlPlanes) imageReady(ctx context.Context) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		img, _, err := v.images.Get(ctx, ControlPlaneImage)
		if err == nil && img != nil && img.Ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the control-plane image %s is not declared and ready (%v): %w", ControlPlaneImage, err, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitReady polls the API servers with the admin's certificate until a
// majority of the members' (apis: each member's published port, "" for
// one that does not run) answer /readyz and the podvisor node is
// registered, asked through endpoint.
func waitReady(ctx context.Context, endpoint string, apis []string, ca *pki.CA, certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair},
		// The API server's certificate names the guest's loopback, where
		// the published port leads.
		ServerName: "127.0.0.1"}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(url string) (int, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err.Error()
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	ready := map[int]bool{}
	for {
		var last []string
		for i, api := range apis {
			if api == "" || ready[i] {
				continue
			}
			if code, body := get("https://" + api + "/readyz"); code == http.StatusOK {
				ready[i] = true
			} else {
				last = append(last, fmt.Sprintf("member %d /readyz: %d %s", i, code, body))
			}
		}
		if len(ready) > len(apis)/2 {
			code, body := get(endpoint + "/api/v1/nodes/podvisor")
			if code == http.StatusOK {
				return nil
			}
			last = append(last, fmt.Sprintf("node podvisor: %d %s", code, body))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API server not ready (%d of %d members ready; %s): %w", len(ready), len(apis), strings.Join(last, "; "), ctx.Err())
		case <-tick.C:
		}
	}
}

// Remove asks for the deletion of the control-plane VMs, drops the paths
// to their guests and removes the CA.
func (v *VMControlPlanes) Remove(ctx context.Context, namespace, name string) error {
	v.mu.Lock()
	pl, ok := v.planes[namespace+"/"+name]
	delete(v.planes, namespace+"/"+name)
	var workers []string
	for key, p := range v.workers {
		if strings.HasPrefix(key, namespace+"/"+name+"/") {
			workers = append(workers, p.guestVM)
			delete(v.workers, key)
		}
	}
	v.mu.Unlock()
	if ok {
		v.Ports.Release(balancerName(namespace, name))
		for _, g := range pl.guests {
			v.Ports.Release(g)
		}
	}
	for _, g := range workers {
		v.Ports.Release(g)
	}
	// Every member the spec could have had: the record's spec may have
	// been replaced by a refused one.
	for i := range events.MaxGuestControlPlanes {
		vmName := controlPlaneVMName(name, i)
		rec, _, err := v.vms.Get(ctx, events.VMRecordKey(namespace, vmName))
		switch {
		case err != nil:
			return err
		case rec != nil && rec.DeletionRequestedAt.IsZero():
			if err := v.out.Emit(ctx, nil, &events.VMDeleteRequested{Namespace: namespace, Name: vmName}); err != nil {
				return err
			}
		}
	}
	return os.RemoveAll(v.dir(namespace, name))
}

// hostPortOf is the host:port of an endpoint URL ("" for none).
func hostPortOf(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return ""
	}
	return u.Host
}

// loopbackHostPort is the host and port of the first URL of a NATS URL
// list, whose host must be a loopback address.
func loopbackHostPort(natsURL string) (string, int, error) {
	first, _, _ := strings.Cut(natsURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil {
		return "", 0, err
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "4222"
	}
	var p int
	if _, err := fmt.Sscan(port, &p); err != nil || p <= 0 || p > 65535 {
		return "", 0, fmt.Errorf("%q: port %q", first, port)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", 0, fmt.Errorf("%q: the host must be a loopback address (the guest dials the same URL on its own loopback)", first)
	}
	return host, p, nil
}

// adminKubeconfig is a self-contained kubeconfig of the admin's
// certificate for endpoint.
func adminKubeconfig(cluster, endpoint, caFile, certFile, keyFile string) ([]byte, error) {
	var data [3]string
	for i, p := range []string{caFile, certFile, keyFile} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
		data[i] = base64.StdEncoding.EncodeToString(b)
	}
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]s
    tls-server-name: 127.0.0.1
    certificate-authority-data: %[3]s
users:
- name: admin
  user:
    client-certificate-data: %[4]s
    client-key-data: %[5]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: admin
current-context: %[1]s
`, cluster, endpoint, data[0], data[1], data[2]), nil
}

// workerVM is worker i's declaration when the worker nodes run in their
// VMs: the control-plane image (it holds podvisor-guest) unless the
// spec names another image, and the user data WorkerUserData with
// certificates signed here for that node. It does not wait for the
// image: its caller did (workerImageReady).
func (v *VMControlPlanes) workerVM(ctx context.Context, ns, name string, spec events.GuestClusterSpec, i int, creds string) (events.VirtualMachine, error) {
	vm := workerVM(ns, name, spec, i)
	vm.Spec.ImageName = v.workerImage(spec)
	ca, err := pki.LoadOrCreateCA(filepath.Join(v.dir(ns, name), "pki"))
	if err != nil {
		return vm, fmt.Errorf("guest cluster %s/%s: CA: %w", ns, name, err)
	}
	node := vm.Metadata.Name
	// The node's client is in system:masters like the control plane's
	// own node (guestcluster/controlplane: its informers read every
	// secret and config map); its kubelet certificate names the loopback
	// the API server's VM reaches it at.
	nodeCert, nodeKey, err := ca.IssueAs("node-"+node, []string{"system:masters"})
	if err != nil {
		return vm, err
	}
	kubeletCert, kubeletKey, err := ca.IssueAs("kubelet-"+node, []string{"podvisor"}, "127.0.0.1", "localhost")
	if err != nil {
		return vm, err
	}
	files := map[string][]byte{}
	for _, p := range []string{ca.CAFile(), nodeCert, nodeKey, kubeletCert, kubeletKey, creds, v.NATSCA} {
		if p == "" {
			continue
		}
		if files[p], err = os.ReadFile(p); err != nil {
			return vm, err
		}
	}
	vm.Spec.UserData, err = WorkerUserData(WorkerBoot{Namespace: ns, Name: name, Node: node, Index: i, Version: spec.Version,
		CACert: files[ca.CAFile()], NodeCert: files[nodeCert], NodeKey: files[nodeKey],
		KubeletCert: files[kubeletCert], KubeletKey: files[kubeletKey],
		NATSURL: v.NATSURL, NATSCreds: files[creds], NATSCA: files[v.NATSCA]})
	if err != nil {
		return vm, bus.Permanent(err)
	}
	return vm, nil
}

// workerImageReady waits (ReadyTimeout, 3 minutes by default) for the
// control-plane image to be declared and ready when the worker VMs boot
// it; workerVM does not wait, so that declareWorkers waits outside
// workerLocks.
func (v *VMControlPlanes) workerImageReady(ctx context.Context, spec events.GuestClusterSpec) error {
	if v.workerImage(spec) != ControlPlaneImage {
		return nil
	}
	timeout := v.ReadyTimeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return v.imageReady(ctx)
}

// workerImage is the worker VMs' image: the control-plane image, which
// holds podvisor-guest, unless the spec names one (whose root must hold
// /usr/bin/podvisor-guest for the node to run).
func (v *VMControlPlanes) workerImage(spec events.GuestClusterSpec) string {
	if spec.Workers.ImageName == "" || spec.Workers.ImageName == events.DefaultGuestClusterNodeImage {
		return ControlPlaneImage
	}
	return spec.Workers.ImageName
}

// connectWorkersSoon runs connectWorkers in the background, one at a time
// (the node.list queries that call it come every few seconds from each
// node, and a path waits for its guest to run).
func (v *VMControlPlanes) connectWorkersSoon(ns, name string, workers map[string]*events.VMRecord) {
	if !v.connecting.TryLock() {
		return
	}
	go func() {
		defer v.connecting.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := v.connectWorkers(ctx, ns, name, workers); err != nil {
			v.Logger.Warn("worker VMs' paths", "guestcluster", ns+"/"+name, "err", err)
		}
	}()
}

// workerPath is what connectWorkers made for a worker VM.
type workerPath struct {
	guestVM, kubelet string // the VM's vCenter name, its published kubelet address
	plane            string // the control plane's (plane.id) it was reached from
}

// connectWorkers opens the paths between the control-plane VMs and each
// running worker VM of the cluster: in the worker's guest, the API
// server (its loopback port ControlPlaneAPIPort leads to the control
// plane's API: its published port, or the balancer in front of its
// members) and NATS; in each control-plane VM's guest, the worker's
// kubelet API (its loopback port WorkerKubeletPort(i) leads to the
// worker's, published). Each path follows its VM across power cycles;
// those of VMs no longer recorded are dropped. Nothing is done before
// Ensure made the control plane's API reachable.
func (v *VMControlPlanes) connectWorkers(ctx context.Context, ns, name string, workers map[string]*events.VMRecord) error {
	natsHost, natsPort, err := loopbackHostPort(v.NATSURL)
	if err != nil {
		return err
	}
	v.mu.Lock()
	pl, ok := v.planes[ns+"/"+name]
	v.mu.Unlock()
	if !ok || pl.api == "" {
		return nil
	}
	prefix := ns + "/" + name + "/"
	var errs []error
	for vmName, r := range workers {
		i := workerIndex(name, vmName)
		if i < 0 || r.UID == "" || !r.DeletionRequestedAt.IsZero() || r.Status.Phase != events.VMPhaseReady ||
			r.Status.PowerState != events.PowerStatePoweredOn {
			continue
		}
		guestVM := events.NativeVMName(r.UID)
		key := prefix + vmName
		v.mu.Lock()
		had := v.workers[key]
		v.mu.Unlock()
		if had.guestVM == guestVM && had.plane == pl.id() {
			continue
		}
		if had.guestVM != "" && had.guestVM != guestVM {
			v.Ports.Release(had.guestVM) // the VM was made again
		}
		p := workerPath{guestVM: guestVM, plane: pl.id()}
		err := v.Ports.Reach(ctx, guestVM, ControlPlaneAPIPort, pl.api)
		if err == nil {
			err = v.Ports.Reach(ctx, guestVM, natsPort, net.JoinHostPort(natsHost, fmt.Sprint(natsPort)))
		}
		if err == nil {
			p.kubelet, err = v.Ports.Publish(ctx, guestVM, WorkerKubeletPort(i), "")
		}
		for _, cpVM := range pl.guests {
			if err == nil && cpVM != "" {
				err = v.Ports.Reach(ctx, cpVM, WorkerKubeletPort(i), p.kubelet)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("paths of worker VM %s/%s: %w", ns, vmName, err))
			continue
		}
		v.mu.Lock()
		v.workers[key] = p
		v.mu.Unlock()
		v.Logger.Info("worker VM connected to its control plane", "guestcluster", ns+"/"+name, "vm", vmName, "kubelet", p.kubelet)
	}
	v.mu.Lock()
	var gone []string
	for key, p := range v.workers {
		if vmName, ok := strings.CutPrefix(key, prefix); ok && workers[vmName] == nil {
			gone = append(gone, p.guestVM)
			delete(v.workers, key)
		}
	}
	v.mu.Unlock()
	for _, g := range gone {
		v.Ports.Release(g)
	}
	return errors.Join(errs...)
}
