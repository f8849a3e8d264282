package guestcluster

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/podvisor/podvisor/events"
)

// A guest cluster's control plane in its own native VM (the first steps of
// moving it off the supervisor's machine; docs/architecture.md,
// "Departures"): the control-plane image is the sample VM operating system
// with podvisor-guest in /usr/bin, and the VM's user data (ControlPlaneUserData)
// formats and mounts its data disk, writes the cluster's CA and the NATS
// identity there and starts podvisor-guest on it.

// ControlPlaneImageRepoTag is the control-plane image `podvisor up` seeds
// beside the sample VM operating system when podvisor-guest is built
// static, and declares as the VirtualMachineImage ControlPlaneImage.
const ControlPlaneImageRepoTag = "podvisor/guestcluster-controlplane:1.0"

// ControlPlaneImage names the VirtualMachineImage of ControlPlaneImageRepoTag.
const ControlPlaneImage = "guestcluster-controlplane"

// ControlPlaneBinaryPath is where podvisor-guest is in the control-plane
// image (no leading slash: an image path).
const ControlPlaneBinaryPath = "usr/bin/podvisor-guest"

// ControlPlaneAPIPort is the API server's port in a control-plane VM.
const ControlPlaneAPIPort = 6443

// ControlPlaneEtcdPortBase places the etcd members of a control plane of
// several VMs: member i serves clients at ControlPlaneEtcdPortBase+2i and
// peers at +2i+1, on its own guest's loopback, and finds member j at the
// same ports of that loopback (the hypervisor's path to member j's VM).
// guestcluster/controlplane.EtcdClientPort and EtcdPeerPort are the same.
const ControlPlaneEtcdPortBase = 2379

// EtcdClientPort and EtcdPeerPort are member i's etcd ports.
func EtcdClientPort(i int) int { return ControlPlaneEtcdPortBase + 2*i }

// EtcdPeerPort: see EtcdClientPort.
func EtcdPeerPort(i int) int { return ControlPlaneEtcdPortBase + 2*i + 1 }

// ControlPlaneNodeKubeletPort is the podvisor node's kubelet API port in
// each control-plane VM of a control plane of several: every member
// serves it on its own loopback, where its own API server reaches it,
// whichever member runs the node.
const ControlPlaneNodeKubeletPort = 10240

// ControlPlaneDataDir is where the control-plane VM mounts its data disk:
// podvisor-guest's directory (etcd's data, the certificates), so a VM
// that restarts keeps its cluster.
const ControlPlaneDataDir = "/var/lib/podvisor-guest"

// ControlPlaneDataDisk is the data disk's name in the VM declaration; the
// guest sees it as its second SCSI disk, /dev/sdb.
const ControlPlaneDataDisk = "etcd"

// ControlPlaneBoot is what a control-plane VM's guest is given to run the
// guest cluster's control plane.
type ControlPlaneBoot struct {
	Namespace, Name string
	// Version is the guest Kubernetes version the nodes report.
	Version string
	// CACert (PEM) is the cluster's CA certificate, minted by the
	// supervisor, which keeps its key to sign the admin's certificate:
	// nothing secret has to come back out of the guest. Certs are the
	// control plane's certificates and keys signed by the supervisor
	// (guestcluster/controlplane.Certificates: file name, such as
	// kube-apiserver.pem or kube-apiserver-key.pem, to PEM); without them
	// CAKey, the CA's key, lets the control plane sign its own.
	CACert, CAKey []byte
	Certs         map[string][]byte
	// NATSURL is the supervisor's NATS as the guest reaches it; NATSCreds
	// the guest cluster's identity; NATSCA (PEM, optional) the CA of the
	// NATS server's certificate.
	NATSURL           string
	NATSCreds, NATSCA []byte
	// RemoteWorkers: the worker nodes run in their own VMs
	// (WorkerUserData), not in the control plane.
	RemoteWorkers bool
	// Member is this VM's index among Members control-plane VMs (etcd
	// members; 0 of 1 when Members is 0).
	Member, Members int
}

// Validate names each missing field.
func (b ControlPlaneBoot) Validate() error {
	var errs []error
	if b.Namespace == "" || b.Name == "" {
		errs = append(errs, errors.New("namespace and name: required"))
	}
	if b.Version == "" {
		errs = append(errs, errors.New("version: required"))
	}
	if b.Members < 0 || b.Members > events.MaxGuestControlPlanes || b.Member < 0 || (b.Member >= b.Members && b.Member > 0) {
		errs = append(errs, fmt.Errorf("member %d of %d: want 0 to members-1, members at most %d", b.Member, b.Members, events.MaxGuestControlPlanes))
	}
	if b.Members > 1 && (b.Certs["etcd.pem"] == nil || b.Certs["etcd-key.pem"] == nil || b.Certs["sa-key.pem"] == nil) {
		errs = append(errs, errors.New("certs: etcd.pem, etcd-key.pem and sa-key.pem: required with several members (etcd's TLS, one service account key)"))
	}
	if len(b.CACert) == 0 || (len(b.CAKey) == 0 && len(b.Certs) == 0) {
		errs = append(errs, errors.New("CA certificate and key: required (the supervisor signs the admin's certificate with them)"))
	}
	for f, v := range b.Certs {
		if f == "" || strings.ContainsAny(f, "/ '\"$`") || f == "ca-key.pem" {
			errs = append(errs, fmt.Errorf("certs: file name %q: want a plain name, not the CA key's", f))
		}
		if s := string(v); strings.Contains(s, "\n"+heredocEnd+"\n") || strings.HasPrefix(s, heredocEnd+"\n") {
			errs = append(errs, fmt.Errorf("certs: %s: holds the line %q", f, heredocEnd))
		}
	}
	if b.NATSURL == "" || len(b.NATSCreds) == 0 {
		errs = append(errs, errors.New("NATS URL and creds: required (how the podvisor node reaches the supervisor)"))
	}
	for what, v := range map[string]string{"CA certificate": string(b.CACert), "CA key": string(b.CAKey),
		"NATS creds": string(b.NATSCreds), "NATS CA": string(b.NATSCA)} {
		if strings.Contains(v, "\n"+heredocEnd+"\n") || strings.HasPrefix(v, heredocEnd+"\n") {
			errs = append(errs, fmt.Errorf("%s: holds the line %q", what, heredocEnd))
		}
	}
	return errors.Join(errs...)
}

const heredocEnd = "PODVISOR_EOF"

// writeFile appends to a user-data script the shell that writes body to
// path (a quoted heredoc: nothing in body is expanded).
func writeFile(w *strings.Builder, path string, body []byte) {
	fmt.Fprintf(w, "cat > %s <<'%s'\n%s", path, heredocEnd, body)
	if len(body) > 0 && body[len(body)-1] != '\n' {
		w.WriteByte('\n')
	}
	w.WriteString(heredocEnd + "\n")
}

// writeNATS appends to a user-data script the shell that writes the
// guest's NATS identity (creds) and, when set, the CA of the NATS server's
// certificate into "$dir/nats", and returns the podvisor-guest flags that
// reach NATS at url with them.
func writeNATS(w *strings.Builder, url string, creds, ca []byte) (flags string) {
	writeFile(w, `"$dir/nats/guest.creds"`, creds)
	flags = " --nats-url " + shellQuote(url) + ` --nats-creds "$dir/nats/guest.creds"`
	if len(ca) > 0 {
		writeFile(w, `"$dir/nats/ca.pem"`, ca)
		flags += ` --nats-ca "$dir/nats/ca.pem"`
	}
	return flags
}

// ControlPlaneUserData is the user data of a guest cluster's control-plane
// VM: a shell script (cloud-init runs a "#!" user data as a script; so
// does the sample image's init) that mounts the data disk /dev/sdb on
// ControlPlaneDataDir, formatting it only when it holds no filesystem
// yet, writes the CA and the NATS identity there, and starts
// podvisor-guest in the background with its API server on
// ControlPlaneAPIPort, again whenever it exits. Run again at every boot,
// it finds the disk's filesystem and resumes the same etcd data.
func ControlPlaneUserData(b ControlPlaneBoot) (string, error) {
	if err := b.Validate(); err != nil {
		return "", fmt.Errorf("control-plane user data: %w", err)
	}
	var w strings.Builder
	file := func(path string, body []byte) { writeFile(&w, path, body) }
	fmt.Fprintf(&w, `#!/bin/sh
# The control plane of guest cluster %[1]s/%[2]s.
set -e
dir=%[3]s disk=/dev/sdb
mkdir -p "$dir" /run/probe
if [ -b "$disk" ]; then
  if mount -o ro "$disk" /run/probe 2>/dev/null; then umount /run/probe
  else mke2fs -F "$disk" >/dev/null && echo "formatted $disk"; fi
  mount "$disk" "$dir" && echo "$disk mounted on $dir"
fi
umask 077
mkdir -p "$dir/pki" "$dir/nats"
`, b.Namespace, b.Name, ControlPlaneDataDir)
	file(`"$dir/pki/ca.pem"`, b.CACert)
	if len(b.Certs) > 0 {
		// Signed ahead: no CA key in the guest (one left by an earlier
		// boot goes).
		w.WriteString("rm -f \"$dir/pki/ca-key.pem\"\n")
		for _, f := range slices.Sorted(maps.Keys(b.Certs)) {
			file(`"$dir/pki/`+f+`"`, b.Certs[f])
		}
	} else {
		file(`"$dir/pki/ca-key.pem"`, b.CAKey)
	}
	flags := writeNATS(&w, b.NATSURL, b.NATSCreds, b.NATSCA)
	if b.RemoteWorkers {
		flags += " --worker-nodes remote"
	}
	if b.Members > 1 {
		flags += fmt.Sprintf(" --member %d --members %d --etcd-port-base %d --node-kubelet-port %d",
			b.Member, b.Members, ControlPlaneEtcdPortBase, ControlPlaneNodeKubeletPort)
	}
	// Kept running the way a service manager would: a podvisor-guest that
	// exits is started again on the same directory (the sample init
	// supervises nothing); a power-off ends the loop with the guest.
	fmt.Fprintf(&w, `(while :; do
  /usr/bin/podvisor-guest run --dir "$dir" --cluster %s --version %s --port %d%s
  echo "podvisor-guest exited $?; starting it again"
  sleep 2
done) >> "$dir/guest.log" 2>&1 &
echo "podvisor-guest started: $!"
`, shellQuote(b.Namespace+"/"+b.Name), shellQuote(b.Version), ControlPlaneAPIPort, flags)
	return w.String(), nil
}

// ControlPlaneVM is the declaration of a guest cluster's control-plane VM
// i: class className, the control-plane image, the network, a data disk
// of diskSize for etcd, and the user data.
func ControlPlaneVM(ns, name, className, network, diskSize string, i int, userData string) events.VirtualMachine {
	return events.VirtualMachine{
		APIVersion: events.APIVersion, Kind: "VirtualMachine",
		Metadata: events.NamespacedMeta{Name: fmt.Sprintf("%s-control-plane-%d", name, i), Namespace: ns, Labels: map[string]string{
			events.LabelGuestCluster: name, events.LabelGuestClusterRole: controlPlaneRole}},
		Spec: events.VirtualMachineSpec{
			ClassName: className, ImageName: ControlPlaneImage, PowerState: events.PowerStatePoweredOn,
			Networks: []string{network},
			Disks:    []events.VMDisk{{Name: ControlPlaneDataDisk, Size: diskSize}},
			UserData: userData,
		},
	}
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// WorkerDataDir is podvisor-guest's directory in a worker VM (its root
// disk): the node's certificates and NATS identity.
const WorkerDataDir = "/var/lib/podvisor-guest"

// WorkerKubeletPort is the port of worker i's kubelet API: on its own
// guest's loopback, and on the control-plane VM's loopback, where the
// API server reaches it (each worker its own port there).
func WorkerKubeletPort(i int) int { return 10250 + i }

// WorkerBoot is what a worker VM's guest is given to run its node of the
// guest cluster: what the supervisor signed for that node, never the CA's
// key.
type WorkerBoot struct {
	Namespace, Name string
	// Node is the node's name (its VM's); Index its worker index.
	Node  string
	Index int
	// Version is the guest Kubernetes version the node reports.
	Version string
	// CACert (PEM) is the cluster's CA certificate; NodeCert and NodeKey
	// the node's client of the API server; KubeletCert and KubeletKey its
	// kubelet API's serving certificate (for 127.0.0.1).
	CACert, NodeCert, NodeKey, KubeletCert, KubeletKey []byte
	// NATSURL is the supervisor's NATS as the guest reaches it; NATSCreds
	// the guest cluster's identity; NATSCA (PEM, optional) the CA of the
	// NATS server's certificate.
	NATSURL           string
	NATSCreds, NATSCA []byte
}

// Validate names each missing field.
func (b WorkerBoot) Validate() error {
	var errs []error
	if b.Namespace == "" || b.Name == "" || b.Node == "" {
		errs = append(errs, errors.New("namespace, name and node: required"))
	}
	if b.Index < 0 || WorkerKubeletPort(b.Index) > 65535 {
		errs = append(errs, fmt.Errorf("index %d: want 0 to %d", b.Index, 65535-WorkerKubeletPort(0)))
	}
	if b.Version == "" {
		errs = append(errs, errors.New("version: required"))
	}
	if len(b.CACert) == 0 || len(b.NodeCert) == 0 || len(b.NodeKey) == 0 || len(b.KubeletCert) == 0 || len(b.KubeletKey) == 0 {
		errs = append(errs, errors.New("CA certificate, node and kubelet certificates and keys: required"))
	}
	if b.NATSURL == "" || len(b.NATSCreds) == 0 {
		errs = append(errs, errors.New("NATS URL and creds: required (how the node reaches the supervisor)"))
	}
	for what, v := range map[string][]byte{"CA certificate": b.CACert, "node certificate": b.NodeCert, "node key": b.NodeKey,
		"kubelet certificate": b.KubeletCert, "kubelet key": b.KubeletKey, "NATS creds": b.NATSCreds, "NATS CA": b.NATSCA} {
		if s := string(v); strings.Contains(s, "\n"+heredocEnd+"\n") || strings.HasPrefix(s, heredocEnd+"\n") {
			errs = append(errs, fmt.Errorf("%s: holds the line %q", what, heredocEnd))
		}
	}
	return errors.Join(errs...)
}

// WorkerUserData is the user data of a guest cluster's worker VM: a shell
// script that writes the node's certificates and the NATS identity in
// WorkerDataDir and keeps `podvisor-guest node` running, its kubelet API
// on WorkerKubeletPort(Index) and the API server at
// 127.0.0.1:ControlPlaneAPIPort (the guest's loopback, which the
// hypervisor forwards to the control-plane VM's published port).
func WorkerUserData(b WorkerBoot) (string, error) {
	if err := b.Validate(); err != nil {
		return "", fmt.Errorf("worker user data: %w", err)
	}
	var w strings.Builder
	file := func(path string, body []byte) { writeFile(&w, path, body) }
	fmt.Fprintf(&w, `#!/bin/sh
# Worker node %[3]s of guest cluster %[1]s/%[2]s.
set -e
dir=%[4]s
umask 077
mkdir -p "$dir/pki" "$dir/nats"
`, b.Namespace, b.Name, b.Node, WorkerDataDir)
	file(`"$dir/pki/ca.pem"`, b.CACert)
	file(`"$dir/pki/node.pem"`, b.NodeCert)
	file(`"$dir/pki/node-key.pem"`, b.NodeKey)
	file(`"$dir/pki/kubelet.pem"`, b.KubeletCert)
	file(`"$dir/pki/kubelet-key.pem"`, b.KubeletKey)
	natsFlags := writeNATS(&w, b.NATSURL, b.NATSCreds, b.NATSCA)
	fmt.Fprintf(&w, `(while :; do
  /usr/bin/podvisor-guest node --dir "$dir" --name %s --cluster %s --version %s --api https://127.0.0.1:%d --kubelet-port %d%s
  echo "podvisor-guest node exited $?; starting it again"
  sleep 2
done) >> "$dir/node.log" 2>&1 &
echo "podvisor-guest node started: $!"
`, shellQuote(b.Node), shellQuote(b.Namespace+"/"+b.Name), shellQuote(b.Version), ControlPlaneAPIPort, WorkerKubeletPort(b.Index),
		natsFlags)
	return w.String(), nil
}
