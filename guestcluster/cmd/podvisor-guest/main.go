// Command podvisor-guest is a guest cluster's control plane: etcd,
// kube-apiserver, the `podvisor` node and the worker nodes (one per worker
// VM the supervisor runs for it) in one process. The guest cluster controller starts it:
//
//	podvisor-guest run --dir DIR --cluster NAMESPACE/NAME --version v1.37.2 \
//	    --nats-url tls://127.0.0.1:4222 --nats-creds gc.creds --nats-ca ca.pem
//
// In a guest cluster's control-plane VM its user data starts it the same
// way, with --port 6443, on the VM's data disk, and with the cluster's CA
// (DIR/pki/ca.pem and ca-key.pem) written there beforehand: the CA found
// in DIR/pki is used, not replaced. It connects to NATS in the background,
// so the API server comes up while the supervisor is out of reach.
//
// A highly available control plane runs one podvisor-guest per member,
// each in its control-plane VM, with --member I --members N (etcd member I
// of N, on ports from --etcd-port-base; see guestcluster/controlplane):
// every member serves the podvisor node's kubelet API at
// --node-kubelet-port, and the node and the worker nodes' controller run
// in the member holding the Lease kube-system/podvisor-node (leader.go).
//
// Once the API server answers and the node is Ready (with several members,
// once its own API server answers: the node may run in another member) it
// writes DIR/ready.json (the endpoint and the admin kubeconfig). SIGTERM stops it.
//
// With --worker-nodes remote the worker nodes run in their own VMs (node
// mode, below): this control plane marks a node NotReady when the
// supervisor says its VM does not run, and removes those it no longer
// lists.
//
// Node mode runs one worker node, in that worker's VM:
//
//	podvisor-guest node --dir DIR --name gc1-worker-0 --cluster NAMESPACE/NAME \
//	    --api https://127.0.0.1:6443 --kubelet-port 10250 \
//	    --nats-url tls://127.0.0.1:4222 --nats-creds gc.creds --nats-ca ca.pem
//
// DIR/pki holds what the supervisor signed for this node and nothing
// more: ca.pem (the cluster's CA certificate, no key), node.pem and
// node-key.pem (its client of the API server), kubelet.pem and
// kubelet-key.pem (its kubelet API's serving certificate, for 127.0.0.1,
// where the API server's VM reaches it).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"k8s.io/client-go/kubernetes"

	"github.com/podvisor/podvisor/guestcluster/controlplane"
	"github.com/podvisor/podvisor/guestcluster/node"
)

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "node" {
		nodeMain()
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "run" {
		fmt.Fprintln(os.Stderr, "usage: podvisor-guest run --dir DIR --cluster NAMESPACE/NAME --nats-url URL --nats-creds FILE [--nats-ca FILE] [--version v1.37.2] [--worker-nodes local|remote]\n"+
			"       podvisor-guest node --dir DIR --name NODE --cluster NAMESPACE/NAME --api URL --kubelet-port PORT --nats-url URL --nats-creds FILE [--nats-ca FILE] [--version v1.37.2]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	dir := fs.String("dir", "", "the control plane's directory (etcd data, certificates, kubeconfig)")
	var sup supervisorFlags
	sup.register(fs)
	port := fs.Int("port", 0, "the API server's port (0: a free one)")
	workerNodes := fs.String("worker-nodes", "local", "where the worker nodes run: local (here) or remote (in their VMs)")
	member := fs.Int("member", 0, "this control plane's index among --members")
	members := fs.Int("members", 1, "how many control planes (etcd members and API servers) the cluster runs")
	etcdPortBase := fs.Int("etcd-port-base", controlplane.DefaultEtcdPortBase, "with several members: member i's etcd serves clients at BASE+2i and peers at BASE+2i+1")
	nodeKubeletPort := fs.Int("node-kubelet-port", 0, "the podvisor node's kubelet API port on this member's loopback (0: a free one); members in VMs of their own use the same port, which each API server reaches on its own loopback")
	_ = fs.Parse(os.Args[2:])
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *workerNodes != "local" && *workerNodes != "remote" {
		log.Error("podvisor-guest", "err", fmt.Errorf("--worker-nodes %q: want local or remote", *workerNodes))
		os.Exit(2)
	}
	ha := haConfig{Member: *member, Members: *members, EtcdPortBase: *etcdPortBase, NodeKubeletPort: *nodeKubeletPort}
	if err := run(ctx, log, *dir, sup.cluster, sup.version, sup.natsURL, sup.creds, sup.ca, *port, *workerNodes == "remote", ha); err != nil {
		log.Error("podvisor-guest", "err", err)
		os.Exit(1)
	}
}

// supervisorFlags are the flags both subcommands take: which guest cluster
// the process belongs to, the Kubernetes version its nodes report, and how
// it reaches the supervisor's NATS.
type supervisorFlags struct {
	cluster, version, natsURL, creds, ca string
}

// register declares the flags on fs, which fills f as it parses.
func (f *supervisorFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.cluster, "cluster", "", "the guest cluster, NAMESPACE/NAME on the supervisor")
	fs.StringVar(&f.version, "version", "v1.37.2", "the guest Kubernetes version the node reports")
	fs.StringVar(&f.natsURL, "nats-url", "", "the supervisor's NATS")
	fs.StringVar(&f.creds, "nats-creds", "", "the guest cluster's NATS identity")
	fs.StringVar(&f.ca, "nats-ca", "", "the CA that signed the NATS server's certificate")
}

// common checks the flags both modes have.
func common(dir, cluster, natsURL, creds string, port int) (ns, name string, errs []error) {
	ns, name, ok := strings.Cut(cluster, "/")
	if dir == "" {
		errs = append(errs, errors.New("--dir: required"))
	}
	if !ok || ns == "" || name == "" {
		errs = append(errs, fmt.Errorf("--cluster %q: want NAMESPACE/NAME", cluster))
	}
	if natsURL == "" || creds == "" {
		errs = append(errs, errors.New("--nats-url and --nats-creds: required (how the node reaches the supervisor)"))
	}
	if port < 0 || port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d: want 0 to 65535", port))
	}
	return ns, name, errs
}

// connect dials the supervisor's NATS as the guest cluster. A VM can boot
// before its path to the supervisor works: the first connection is
// retried like a lost one, and the node's queries fail (pods wait) until
// it is made.
func connect(client, natsURL, creds, ca string) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(client), nats.UserCredentials(creds), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true)}
	if ca != "" {
		opts = append(opts, nats.RootCAs(ca))
	}
	nc, err := nats.Connect(natsURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("NATS %s: %w", natsURL, err)
	}
	return nc, nil
}

// haConfig places this control plane among the cluster's members.
type haConfig struct {
	Member, Members, EtcdPortBase, NodeKubeletPort int
}

func run(ctx context.Context, log *slog.Logger, dir, cluster, version, natsURL, creds, ca string, port int, remoteWorkers bool, ha haConfig) error {
	ns, name, errs := common(dir, cluster, natsURL, creds, port)
	if ha.Members < 1 || ha.Member < 0 || ha.Member >= ha.Members {
		errs = append(errs, fmt.Errorf("--member %d of --members %d: want 0 to members-1", ha.Member, ha.Members))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	nc, err := connect("podvisor-guest-"+ns+"-"+name, natsURL, creds, ca)
	if err != nil {
		return err
	}
	defer nc.Close()

	start := time.Now()
	cp, err := controlplane.Start(ctx, controlplane.Config{Dir: dir, Port: port, ClusterName: name, Logger: log,
		Member: ha.Member, Members: ha.Members, EtcdPortBase: ha.EtcdPortBase})
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cp.NodeConfig)
	if err != nil {
		return err
	}
	sup := &node.Supervisor{NC: nc, Namespace: ns, Name: name}
	if ha.Members > 1 && ha.NodeKubeletPort == 0 {
		if ha.NodeKubeletPort, err = controlplane.FreePort(cp.Host); err != nil {
			return err
		}
	}
	nodes := func(ctx context.Context, ready chan<- struct{}) error {
		n, err := node.New(node.Config{Client: client, Host: cp.Host, Port: ha.NodeKubeletPort, KubeletTLS: cp.KubeletTLS,
			KubeletAPIElsewhere: ha.Members > 1, Version: version, Logger: log, Supervisor: sup})
		if err != nil {
			return err
		}
		nodeReady := make(chan struct{})
		nodeErr := make(chan error, 1)
		go func() { nodeErr <- n.Run(ctx, nodeReady) }()
		select {
		case <-nodeReady:
		case err := <-nodeErr:
			return err
		}
		// The worker nodes (one per worker VM) follow the supervisor's list.
		workers := &node.Workers{Client: client, Host: cp.Host, KubeletTLS: cp.KubeletTLS, Supervisor: sup, Version: version, Logger: log,
			Remote: remoteWorkers}
		go workers.Run(ctx)
		close(ready)
		return <-nodeErr
	}
	nodeErr := make(chan error, 1)
	if ha.Members == 1 {
		ready := make(chan struct{})
		go func() { nodeErr <- nodes(ctx, ready) }()
		select {
		case <-ready:
		case err := <-nodeErr:
			return err
		case <-cp.Done():
			return fmt.Errorf("control plane stopped: %v", cp.Err())
		}
	} else {
		// Every member serves the podvisor node's kubelet API; the node
		// itself (and the worker nodes' controller) runs in the member
		// that holds the Lease.
		go func() {
			addr := net.JoinHostPort(cp.Host, strconv.Itoa(ha.NodeKubeletPort))
			if err := node.ServeKubeletAPI(ctx, addr, cp.KubeletTLS, sup, log); err != nil {
				nodeErr <- err
			}
		}()
		go func() { nodeErr <- lead(ctx, log, client, controlplane.MemberName(ha.Member), nodes) }()
	}
	b, _ := json.Marshal(map[string]any{"endpoint": cp.Endpoint, "kubeconfig": cp.AdminKubeconfig})
	if err := os.WriteFile(filepath.Join(dir, "ready.json.tmp"), b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, "ready.json.tmp"), filepath.Join(dir, "ready.json")); err != nil {
		return err
	}
	log.Info("guest cluster ready", "cluster", cluster, "endpoint", cp.Endpoint, "took", time.Since(start).Round(time.Millisecond))
	select {
	case err := <-nodeErr:
		stop := ctx.Err() != nil
		<-cp.Done()
		if stop {
			return nil
		}
		return err
	case <-cp.Done():
		return cp.Err()
	}
}
