// Package controlplane runs a guest cluster's Kubernetes control plane in
// one process: an embedded etcd (go.etcd.io/etcd/server/v3, the line
// k8s.io/kubernetes pins) and the real kube-apiserver of k8s.io/kubernetes,
// started through its own command (app.NewAPIServerCommand) with flags, as
// a kube-apiserver binary would be.
//
//	cp, err := controlplane.Start(ctx, controlplane.Config{Dir: dir, Logger: log})
//	// cp.AdminKubeconfig: what `podvisor get guestcluster NAME --kubeconfig` prints
//	// cp.NodeConfig:      the client of the podvisor node (virtual-kubelet)
//	<-cp.Done()
//
// Everything it keeps is in Dir: etcd's data (etcd/), the cluster's own CA
// and certificates (pki/: API server serving certificate for the loopback
// address, the admin's client certificate in system:masters, the node's,
// the API server's client certificate for the kubelet API, the service
// account signing key) and admin.kubeconfig. A restart on the same Dir finds
// the same CA and data, so a kubeconfig handed out stays valid.
//
// With Config.Members above 1 the control plane is one member of a highly
// available one (stacked etcd, as kubeadm lays it out): its etcd is member
// Member of a cluster of Members, on fixed ports of the loopback
// (EtcdClientPort, EtcdPeerPort) over TLS with client certificates
// (EtcdCertificate), finding the other members at their ports of the same
// loopback (whoever runs the members makes those lead to them), and its
// API server uses every member. The service account key is given, not
// made, so that the members accept each other's tokens.
//
// The API server listens on the loopback address only (the guest's
// control-plane VM and the supervisor share it on a simulated datacenter);
// etcd listens on loopback too, on ports of its own. The ServiceAccount
// admission plugin is off: no kube-controller-manager runs to create the
// default service accounts, and pods of this cluster run as pod VMs of the
// supervisor, which mounts no service account token.
package controlplane
