package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podvisor/podvisor/guestcluster/node"
)

// nodeMain is `podvisor-guest node`: one worker node in its worker VM.
func nodeMain() {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	dir := fs.String("dir", "", "the node's directory (pki/ with its certificates)")
	name := fs.String("name", "", "the node's name (its worker VM's)")
	var sup supervisorFlags
	sup.register(fs)
	api := fs.String("api", "", "the guest cluster's API server as this VM reaches it")
	kubeletPort := fs.Int("kubelet-port", 0, "the kubelet API's port on 127.0.0.1, where the API server's VM reaches it")
	_ = fs.Parse(os.Args[2:])
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runNode(ctx, log, *dir, *name, sup.cluster, *api, *kubeletPort, sup.version, sup.natsURL, sup.creds, sup.ca); err != nil {
		log.Error("podvisor-guest node", "err", err)
		os.Exit(1)
	}
}

func runNode(ctx context.Context, log *slog.Logger, dir, name, cluster, api string, kubeletPort int, version, natsURL, creds, ca string) error {
	ns, gc, errs := common(dir, cluster, natsURL, creds, kubeletPort)
	if name == "" {
		errs = append(errs, errors.New("--name: required"))
	}
	if api == "" {
		errs = append(errs, errors.New("--api: required (the guest cluster's API server)"))
	}
	if kubeletPort == 0 {
		errs = append(errs, errors.New("--kubelet-port: required (the API server's VM reaches the node there)"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	pkiDir := filepath.Join(dir, "pki")
	caFile := filepath.Join(pkiDir, "ca.pem")
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("the cluster's CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s: no certificate", caFile)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "kubelet.pem"), filepath.Join(pkiDir, "kubelet-key.pem"))
	if err != nil {
		return fmt.Errorf("the kubelet API's certificate: %w", err)
	}
	client, err := kubernetes.NewForConfig(&rest.Config{Host: api, TLSClientConfig: rest.TLSClientConfig{
		CAFile: caFile, CertFile: filepath.Join(pkiDir, "node.pem"), KeyFile: filepath.Join(pkiDir, "node-key.pem"),
		// The API server's certificate names its own loopback, where this
		// VM's forwarder leads.
		ServerName: "127.0.0.1",
	}})
	if err != nil {
		return err
	}
	nc, err := connect("podvisor-guest-"+ns+"-"+gc+"-"+name, natsURL, creds, ca)
	if err != nil {
		return err
	}
	defer nc.Close()
	w := &node.Workers{Client: client, Host: "127.0.0.1", Port: kubeletPort, Only: name, Version: version, Logger: log,
		Supervisor: &node.Supervisor{NC: nc, Namespace: ns, Name: gc},
		// Only the API server's kubelet client (a certificate of the
		// cluster's CA) is served.
		KubeletTLS: &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
	}
	log.Info("worker node starting", "node", name, "cluster", cluster, "api", api, "kubelet-port", kubeletPort)
	w.Run(ctx)
	return nil
}
