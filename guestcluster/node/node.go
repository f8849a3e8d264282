package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podvisor/podvisor/events"
)

// NodeName is the guest cluster's node that runs pods as pod VMs.
const NodeName = "podvisor"

// Config is what the node runs with.
type Config struct {
	// Name is the node's name; NodeName when empty. Only the podvisor node
	// binds unscheduled pods (to itself).
	Name string
	// Worker, when set, makes the node one of the guest cluster's worker
	// nodes: its size is its VM's, and it is Ready only while SetWorker
	// says its VM runs.
	Worker *events.GuestNode
	// Client is the node's client of the guest API server.
	Client kubernetes.Interface
	// Host is the address of the kubelet API (the node's InternalIP).
	Host string
	// Port is the kubelet API's port; 0 picks a free one. A node in a
	// worker VM listens on a fixed port, the one the API server's VM
	// reaches it at.
	Port int
	// KubeletTLS serves the kubelet API (logs, exec) to the API server.
	KubeletTLS *tls.Config
	// KubeletAPIElsewhere: the kubelet API at Host:Port is served by
	// ServeKubeletAPI, not by this node. A highly available control plane
	// runs the podvisor node in one member at a time (the Lease's holder)
	// but serves its kubelet API in every member, at the same port of each
	// member's own loopback, so that every API server reaches it.
	KubeletAPIElsewhere bool
	Supervisor          *Supervisor
	// Version is the guest Kubernetes version the node reports.
	Version string
	// PollInterval is how often pod statuses are read from the supervisor
	// (default 1s).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Node is a running node of the guest cluster: the podvisor node or a
// worker node.
type Node struct {
	name     string
	vk       *nodeutil.Node
	provider *Provider
	binder   *Binder
	// status sends a worker node's status (nil for the podvisor node),
	// spec is the node as registered.
	status *node.NaiveNodeProviderV2
	spec   *corev1.Node
}

// New builds the node: virtual-kubelet with the provider, serving the
// kubelet API on Host at a free port.
func New(cfg Config) (*Node, error) {
	port := cfg.Port
	if port == 0 {
		l, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, "0"))
		if err != nil {
			return nil, fmt.Errorf("node: kubelet port: %w", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	name := cfg.Name
	if name == "" {
		name = NodeName
	}
	prov := NewProvider(cfg.Supervisor, cfg.PollInterval, cfg.Logger)
	prov.node = name
	n := &Node{name: name, provider: prov}
	if name == NodeName {
		n.binder = &Binder{Client: cfg.Client, Node: NodeName, Logger: cfg.Logger}
	}
	mux := http.NewServeMux()
	routes := nodeutil.AttachProviderRoutes(mux)
	kubeletTLS := cfg.KubeletTLS
	if cfg.KubeletAPIElsewhere {
		// No handler and no TLS: virtual-kubelet serves no HTTP.
		routes, kubeletTLS = func(*nodeutil.NodeConfig) error { return nil }, nil
	}
	vk, err := nodeutil.NewNode(name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		describe(pc.Node, name, cfg.Host, port, cfg.Version)
		if cfg.Worker == nil {
			return prov, nil, nil
		}
		// A worker node's readiness is its VM's: its status is sent by
		// SetWorker, not set Ready once by virtual-kubelet.
		describeWorker(pc.Node, *cfg.Worker)
		n.spec, n.status = pc.Node, node.NewNaiveNodeProvider()
		return prov, n.status, nil
	},
		nodeutil.WithClient(cfg.Client),
		routes,
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = net.JoinHostPort(cfg.Host, strconv.Itoa(port))
			if !cfg.KubeletAPIElsewhere {
				c.Handler = withTailZero(mux)
			}
			c.TLSConfig = kubeletTLS
			c.NumWorkers = 4
			c.InformerResyncPeriod = time.Minute
			return nil
		},
	)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	n.vk = vk
	return n, nil
}

// describe fills what the node tells the guest cluster about itself.
func describe(n *corev1.Node, name, host string, port int, version string) {
	n.Labels["kubernetes.io/os"] = "linux"
	n.Labels["node.kubernetes.io/instance-type"] = "podvisor"
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion: version, OperatingSystem: "linux", Architecture: "amd64",
		ContainerRuntimeVersion: "podvisor://pod-vm",
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: host}, {Type: corev1.NodeHostName, Address: name}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
	// The node stands for the supervisor's capacity, which its scheduler
	// places: these figures only let the guest cluster bind pods.
	n.Status.Capacity = corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("256"),
		corev1.ResourceMemory: resource.MustParse("1Ti"),
		corev1.ResourcePods:   resource.MustParse("1000"),
	}
	n.Status.Allocatable = n.Status.Capacity.DeepCopy()
}

// LabelWorker marks the guest cluster's worker nodes (value: the VM's
// class).
const LabelWorker = "podvisor.io/worker"

// describeWorker makes the node a worker node of VM w: labelled, with the
// VM's size as its capacity, NotReady until SetWorker says the VM runs.
func describeWorker(n *corev1.Node, w events.GuestNode) {
	n.Labels[LabelWorker] = w.ClassName
	n.Labels["node-role.kubernetes.io/worker"] = ""
	n.Labels["node.kubernetes.io/instance-type"] = w.ClassName
	n.Status.Capacity = corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(w.CPUs), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(w.MemoryBytes, resource.BinarySI),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	n.Status.Allocatable = n.Status.Capacity.DeepCopy()
	setReady(n, w)
}

// setReady sets the node's Ready condition from its VM's state.
func setReady(n *corev1.Node, w events.GuestNode) {
	status, reason, msg := corev1.ConditionFalse, "WorkerVMNotRunning", w.Message
	n.Status.Phase = corev1.NodePending
	if w.Ready {
		status, reason, msg = corev1.ConditionTrue, "WorkerVMRunning", fmt.Sprintf("worker VM runs on %s", w.Host)
		n.Status.Phase = corev1.NodeRunning
	}
	now := metav1.Now()
	for i, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status != status {
			c.LastTransitionTime = now
		}
		c.Status, c.Reason, c.Message, c.LastHeartbeatTime = status, reason, msg, now
		n.Status.Conditions[i] = c
	}
	for i, a := range n.Status.Addresses {
		if a.Type == corev1.NodeExternalIP {
			n.Status.Addresses = append(n.Status.Addresses[:i], n.Status.Addresses[i+1:]...)
			break
		}
	}
	if len(w.IPs) > 0 {
		// The VM's address, for a person; the kubelet API is reached
		// at InternalIP (a loopback: the control plane's, or its VM's
		// forwarder to the worker VM's).
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: w.IPs[0]})
	}
}

// SetWorker sends a worker node's new state (its VM's) to the guest
// cluster; it waits until the node controller runs.
func (n *Node) SetWorker(ctx context.Context, w events.GuestNode) error {
	if n.status == nil {
		return fmt.Errorf("node %s is not a worker node", n.name)
	}
	spec := n.spec.DeepCopy()
	setReady(spec, w)
	return n.status.UpdateStatus(ctx, spec)
}

// Run runs the node until ctx ends; ready is closed once the node is
// registered (Ready, for the podvisor node) and its pod controller runs.
func (n *Node) Run(ctx context.Context, ready chan<- struct{}) error {
	go n.provider.Run(ctx)
	if n.binder != nil {
		go n.binder.Run(ctx)
	}
	errc := make(chan error, 1)
	go func() { errc <- n.vk.Run(ctx) }()
	if err := n.vk.WaitReady(ctx, 2*time.Minute); err != nil {
		return fmt.Errorf("node %s: not ready: %w", n.name, err)
	}
	close(ready)
	err := <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// kubeletAPI is the kubelet API's handler of prov's pods.
func kubeletAPI(prov *Provider) http.Handler {
	mux := http.NewServeMux()
	api.AttachPodRoutes(api.PodHandlerConfig{
		RunInContainer:    prov.RunInContainer,
		AttachToContainer: prov.AttachToContainer,
		GetContainerLogs:  prov.GetContainerLogs,
		GetPods:           prov.GetPods,
		GetStatsSummary:   prov.GetStatsSummary,
		PortForward:       prov.PortForward,
	}, mux, false)
	return withTailZero(mux)
}

// ServeKubeletAPI serves the podvisor node's kubelet API (container logs
// and exec, which the API server asks of the node at its InternalIP and
// kubelet port) on addr until ctx ends. Logs and exec go to the
// supervisor, so any member of the control plane answers them alike,
// whether or not it runs the node now.
func ServeKubeletAPI(ctx context.Context, addr string, tlsCfg *tls.Config, sup *Supervisor, log *slog.Logger) error {
	ln, err := tls.Listen("tcp", addr, tlsCfg)
	if err != nil {
		return fmt.Errorf("kubelet API: %w", err)
	}
	srv := &http.Server{Handler: kubeletAPI(NewProvider(sup, 0, log)), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("kubelet API: %w", err)
	}
	return nil
}
