package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
)

// NodeName is the guest cluster's node that runs pods as pod VMs.
const NodeName = "podvisor"

// Config is what the node runs with.
type Config struct {
	// Client is the node's client of the guest API server.
	Client kubernetes.Interface
	// Host is the address of the kubelet API (the node's InternalIP).
	Host string
	// KubeletTLS serves the kubelet API (logs, exec) to the API server.
	KubeletTLS *tls.Config
	Supervisor *Supervisor
	// Version is the guest Kubernetes version the node reports.
	Version string
	// PollInterval is how often pod statuses are read from the supervisor
	// (default 1s).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Node is the running podvisor node.
type Node struct {
	vk       *nodeutil.Node
	provider *Provider
	binder   *Binder
}

// New builds the node: virtual-kubelet with the provider, serving the
// kubelet API on Host at a free port.
func New(cfg Config) (*Node, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, "0"))
	if err != nil {
		return nil, fmt.Errorf("node: kubelet port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	prov := NewProvider(cfg.Supervisor, cfg.PollInterval, cfg.Logger)
	mux := http.NewServeMux()
	vk, err := nodeutil.NewNode(NodeName, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		describe(pc.Node, cfg.Host, port, cfg.Version)
		return prov, nil, nil
	},
		nodeutil.WithClient(cfg.Client),
		nodeutil.AttachProviderRoutes(mux),
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = net.JoinHostPort(cfg.Host, strconv.Itoa(port))
			c.Handler = mux
			c.TLSConfig = cfg.KubeletTLS
			c.NumWorkers = 4
			c.InformerResyncPeriod = time.Minute
			return nil
		},
	)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	return &Node{vk: vk, provider: prov, binder: &Binder{Client: cfg.Client, Node: NodeName, Logger: cfg.Logger}}, nil
}

// describe fills what the node tells the guest cluster about itself.
func describe(n *corev1.Node, host string, port int, version string) {
	n.Labels["kubernetes.io/os"] = "linux"
	n.Labels["node.kubernetes.io/instance-type"] = "podvisor"
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion: version, OperatingSystem: "linux", Architecture: "amd64",
		ContainerRuntimeVersion: "podvisor://pod-vm",
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: host}, {Type: corev1.NodeHostName, Address: NodeName}}
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

// Run runs the node until ctx ends; ready is closed once the node is
// registered Ready and its pod controller runs.
func (n *Node) Run(ctx context.Context, ready chan<- struct{}) error {
	go n.provider.Run(ctx)
	go n.binder.Run(ctx)
	errc := make(chan error, 1)
	go func() { errc <- n.vk.Run(ctx) }()
	if err := n.vk.WaitReady(ctx, 2*time.Minute); err != nil {
		return fmt.Errorf("node: not ready: %w", err)
	}
	close(ready)
	err := <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}
