package guestcluster

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
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
// Reach); on vSphere it would be a load balancer in front of the VM and a
// route from the VM's network to the supervisor. VMs are named by their
// vCenter name (events.NativeVMName of the record's UID).
type GuestPorts interface {
	// Publish makes the guest's loopback port reachable from this machine
	// and returns the address (host:port) to dial.
	Publish(ctx context.Context, vm string, port int) (string, error)
	// Reach makes target, an address of this machine, reachable inside
	// the guest at its loopback port port, in every boot of it.
	Reach(ctx context.Context, vm string, port int, target string) error
	// Release drops what Publish and Reach made for the VM.
	Release(vm string)
}

// VMControlPlanes runs each guest cluster's control plane in its own
// native VM, <cluster>-control-plane-0 (ControlPlaneVM, the image
// ControlPlaneImage): its user data (ControlPlaneUserData) starts
// podvisor-guest on the VM's data disk. The supervisor keeps the
// cluster's CA in Dir/<namespace>.<name>/pki and signs the admin's
// certificate itself; the API server is reached through the port Ports
// publishes, and the guest reaches NATS through the address Ports makes
// reachable in it (its loopback, at the port of NATSURL). Readiness is
// /readyz and the podvisor node, asked of the API server; a control plane
// that stops answering is started again by the VM (its declared power
// state), not by this process.
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

	mu        sync.Mutex
	endpoints map[string]string // published API address by VM name
}

var _ ControlPlanes = (*VMControlPlanes)(nil)

func (v *VMControlPlanes) dir(ns, name string) string { return filepath.Join(v.Dir, ns+"."+name) }

// Ensure declares the control-plane VM unless it is, waits for it to run,
// opens the paths to and from its guest and waits for its API server to
// be ready and its podvisor node registered.
func (v *VMControlPlanes) Ensure(ctx context.Context, cp ControlPlane) (Endpoint, error) {
	key := cp.Namespace + "/" + cp.Name
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
	vmName := fmt.Sprintf("%s-control-plane-%d", cp.Name, 0)
	rec, _, err := v.vms.Get(ctx, events.VMRecordKey(cp.Namespace, vmName))
	if err != nil {
		return Endpoint{}, err
	}
	if rec != nil && !rec.DeletionRequestedAt.IsZero() {
		return Endpoint{}, bus.RetryAfter(fmt.Errorf("control-plane VM %s/%s is still being deleted", cp.Namespace, vmName), workerRetry)
	}
	// Declared once: the user data holds a freshly minted identity each
	// time, and a VM's user data is read at its boots anyway.
	if rec == nil {
		if err := v.declare(ctx, cp, ca, vmName); err != nil {
			return Endpoint{}, err
		}
	}
	rec, err = v.running(ctx, cp.Namespace, vmName)
	if err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: %w", key, err)
	}
	guestVM := events.NativeVMName(rec.UID)
	if err := v.Ports.Reach(ctx, guestVM, natsPort, net.JoinHostPort(natsHost, fmt.Sprint(natsPort))); err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: NATS in the guest: %w", key, err)
	}
	addr, err := v.Ports.Publish(ctx, guestVM, ControlPlaneAPIPort)
	if err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: publish the API port: %w", key, err)
	}
	v.mu.Lock()
	if v.endpoints == nil {
		v.endpoints = map[string]string{}
	}
	v.endpoints[cp.Namespace+"/"+vmName] = guestVM
	v.mu.Unlock()
	certFile, keyFile, err := ca.IssueAs("admin", []string{"system:masters"})
	if err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s: admin certificate: %w", key, err)
	}
	ep := Endpoint{URL: "https://" + addr}
	if ep.Kubeconfig, err = adminKubeconfig(cp.Name, ep.URL, ca.CAFile(), certFile, keyFile); err != nil {
		return Endpoint{}, err
	}
	if err := waitReady(ctx, ep.URL, ca, certFile, keyFile); err != nil {
		return Endpoint{}, fmt.Errorf("control plane %s in VM %s/%s: %w", key, cp.Namespace, vmName, err)
	}
	return ep, nil
}

// declare publishes the control-plane VM's declaration once its image is
// declared (`up` declares it in the background).
func (v *VMControlPlanes) declare(ctx context.Context, cp ControlPlane, ca *pki.CA, vmName string) error {
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
	caKey, err := read(filepath.Join(filepath.Dir(ca.CAFile()), "ca-key.pem"))
	if err != nil {
		return err
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
		CACert: caCert, CAKey: caKey, NATSURL: v.NATSURL, NATSCreds: creds, NATSCA: natsCA})
	if err != nil {
		return bus.Permanent(err)
	}
	size := v.DiskSize
	if size == "" {
		size = "1Gi"
	}
	vm := ControlPlaneVM(cp.Namespace, cp.Name, cp.ClassName, cp.Network, size, 0, ud)
	return v.out.Emit(ctx, nil, &events.VMDeclared{VM: vm})
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

// running waits for the VM's record to show it Ready and PoweredOn on a
// host.
func (v *VMControlPlanes) running(ctx context.Context, ns, vmName string) (*events.VMRecord, error) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		r, _, err := v.vms.Get(ctx, events.VMRecordKey(ns, vmName))
		switch {
		case err == nil && r == nil:
			last = "not recorded yet"
		case err == nil && r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn && r.Status.Host != "":
			return r, nil
		case err == nil:
			last = fmt.Sprintf("%s, %s", r.Status.Phase, orNone(r.Status.PowerState))
		default:
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("VM %s/%s does not run (%s): %w", ns, vmName, last, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitReady polls /readyz and the podvisor node with the admin's
// certificate.
func waitReady(ctx context.Context, endpoint string, ca *pki.CA, certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair},
		// The API server's certificate names the guest's loopback, where
		// the published port leads.
		ServerName: "127.0.0.1"}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String()+path, nil)
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
	var last string
	for {
		code, body := get("/readyz")
		if code == http.StatusOK {
			if code, body = get("/api/v1/nodes/podvisor"); code == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("node podvisor: %d %s", code, body)
		} else {
			last = fmt.Sprintf("/readyz: %d %s", code, body)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API server not ready (%s): %w", last, ctx.Err())
		case <-tick.C:
		}
	}
}

// Remove asks for the deletion of the control-plane VM, drops the paths
// to its guest and removes the CA.
func (v *VMControlPlanes) Remove(ctx context.Context, namespace, name string) error {
	vmName := fmt.Sprintf("%s-control-plane-%d", name, 0)
	v.mu.Lock()
	guestVM, ok := v.endpoints[namespace+"/"+vmName]
	delete(v.endpoints, namespace+"/"+vmName)
	v.mu.Unlock()
	if ok {
		v.Ports.Release(guestVM)
	}
	rec, _, err := v.vms.Get(ctx, events.VMRecordKey(namespace, vmName))
	switch {
	case err != nil:
		return err
	case rec != nil && rec.DeletionRequestedAt.IsZero():
		if err := v.out.Emit(ctx, nil, &events.VMDeleteRequested{Namespace: namespace, Name: vmName}); err != nil {
			return err
		}
	}
	return os.RemoveAll(v.dir(namespace, name))
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
