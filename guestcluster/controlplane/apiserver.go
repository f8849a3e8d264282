package controlplane

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiServerArgs are the kube-apiserver flags of a guest cluster.
func apiServerArgs(c *certs, host string, port int, etcdURLs string) []string {
	var etcdTLS []string
	if c.etcdCert != "" {
		etcdTLS = []string{"--etcd-cafile=" + c.caFile, "--etcd-certfile=" + c.etcdCert, "--etcd-keyfile=" + c.etcdKey}
	}
	return append(etcdTLS,
		"--etcd-servers="+etcdURLs,
		"--bind-address="+host,
		"--advertise-address="+host,
		// The guest's API server listens on loopback, which the endpoint
		// reconciler refuses to publish as the kubernetes Service's
		// endpoint; nothing in a guest cluster dials that Service.
		"--endpoint-reconciler-type=none",
		"--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+c.serverCert,
		"--tls-private-key-file="+c.serverKey,
		"--client-ca-file="+c.caFile,
		"--service-account-key-file="+c.saKey,
		"--service-account-signing-key-file="+c.saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		// No kube-controller-manager creates service accounts (see doc.go).
		"--disable-admission-plugins=ServiceAccount",
		// Logs and exec: the API server calls the podvisor node's kubelet
		// API, verifying it against the cluster's CA, with a client
		// certificate the node checks.
		"--kubelet-client-certificate="+c.kubeletCliCert,
		"--kubelet-client-key="+c.kubeletKey,
		"--kubelet-certificate-authority="+c.caFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	)
}

// runAPIServer runs kube-apiserver as its command does (flags, logging,
// Complete, Validate, Run), with ctx as its life: the command itself builds
// a signal context of its own, which can exist only once per process.
func runAPIServer(ctx context.Context, args []string) error {
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return fmt.Errorf("kube-apiserver feature gates: %w", err)
	}
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	gate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, gate); err != nil {
		return fmt.Errorf("kube-apiserver logging: %w", err)
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return fmt.Errorf("kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return fmt.Errorf("kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	return app.Run(ctx, completed)
}
