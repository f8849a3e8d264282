package guestcluster

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestControlPlaneUserData(t *testing.T) {
	b := ControlPlaneBoot{Namespace: "team-a", Name: "gc1", Version: "v1.37.2",
		CACert: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), CAKey: []byte("KEY"),
		NATSURL: "tls://127.0.0.1:4222", NATSCreds: []byte("CREDS\n"), NATSCA: []byte("NATSCA")}
	ud, err := ControlPlaneUserData(b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ud, "#!/bin/sh\n") {
		t.Errorf("user data does not start as a script:\n%s", ud)
	}
	// sh parses it (the heredocs are closed).
	if out, err := exec.Command("sh", "-n", "-c", ud).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v %s\n%s", err, out, ud)
	}
	for _, want := range []string{"MIIB\n", "KEY\nPODVISOR_EOF\n", "--port 6443", "--nats-url 'tls://127.0.0.1:4222'",
		`--nats-ca "$dir/nats/ca.pem"`, "--cluster 'team-a/gc1'", "dir=" + ControlPlaneDataDir} {
		if !strings.Contains(ud, want) {
			t.Errorf("user data lacks %q:\n%s", want, ud)
		}
	}

	bad := b
	bad.CAKey, bad.NATSURL, bad.Version = nil, "", ""
	bad.NATSCreds = []byte("x\nPODVISOR_EOF\ny")
	_, err = ControlPlaneUserData(bad)
	for _, want := range []string{"version: required", "CA certificate and key: required", "NATS URL and creds: required", `NATS creds: holds the line "PODVISOR_EOF"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to say %q", err, want)
		}
	}
}

func TestLoopbackHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"tls://127.0.0.1:4222":                      "127.0.0.1 4222",
		"nats://localhost":                          "localhost 4222",
		"tls://127.0.0.1:5000,tls://127.0.0.1:5001": "127.0.0.1 5000",
	} {
		h, p, err := loopbackHostPort(in)
		if got := h + " " + strconv.Itoa(p); err != nil || got != want {
			t.Errorf("loopbackHostPort(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"tls://10.0.0.1:4222":     "must be a loopback address",
		"tls://127.0.0.1:99999":   "port",
		"tls://nats.example:4222": "must be a loopback address",
	} {
		if _, _, err := loopbackHostPort(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("loopbackHostPort(%q): %v, want an error saying %q", in, err, want)
		}
	}
}

// TestWorkerUserData: a worker VM's user data runs its node with what was
// signed for it (no CA key), the API server and the kubelet API on the
// guest's loopback at the ports the hypervisor's paths use.
func TestWorkerUserData(t *testing.T) {
	b := WorkerBoot{Namespace: "team-a", Name: "gc1", Node: "gc1-worker-2", Index: 2, Version: "v1.37.2",
		CACert: []byte("CACERT\n"), NodeCert: []byte("NODECERT"), NodeKey: []byte("NODEKEY"),
		KubeletCert: []byte("KUBELETCERT"), KubeletKey: []byte("KUBELETKEY"),
		NATSURL: "tls://127.0.0.1:4222", NATSCreds: []byte("CREDS\n")}
	ud, err := WorkerUserData(b)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "-n", "-c", ud).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v %s\n%s", err, out, ud)
	}
	for _, want := range []string{"podvisor-guest node", "--name 'gc1-worker-2'", "--cluster 'team-a/gc1'",
		"--api https://127.0.0.1:" + strconv.Itoa(ControlPlaneAPIPort), "--kubelet-port " + strconv.Itoa(WorkerKubeletPort(2)),
		`"$dir/pki/node-key.pem"`, "KUBELETKEY\nPODVISOR_EOF\n", "dir=" + WorkerDataDir} {
		if !strings.Contains(ud, want) {
			t.Errorf("user data lacks %q:\n%s", want, ud)
		}
	}
	if strings.Contains(ud, "ca-key") || strings.Contains(ud, "--nats-ca") {
		t.Errorf("user data has a CA key or a NATS CA it was not given:\n%s", ud)
	}
	bad := b
	bad.NodeKey, bad.Index = nil, -1
	_, err = WorkerUserData(bad)
	for _, want := range []string{"index -1", "node and kubelet certificates and keys: required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to say %q", err, want)
		}
	}
	// A control plane given its certificates signed ahead gets no CA key.
	cp, err := ControlPlaneUserData(ControlPlaneBoot{Namespace: "team-a", Name: "gc1", Version: "v1.37.2", CACert: []byte("C"),
		Certs:   map[string][]byte{"kube-apiserver.pem": []byte("APICERT"), "kube-apiserver-key.pem": []byte("APIKEY")},
		NATSURL: "tls://127.0.0.1:4222", NATSCreds: []byte("CREDS"), RemoteWorkers: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--worker-nodes remote", `"$dir/pki/kube-apiserver-key.pem"`, "APIKEY\nPODVISOR_EOF\n", `rm -f "$dir/pki/ca-key.pem"`} {
		if !strings.Contains(cp, want) {
			t.Errorf("control-plane user data lacks %q:\n%s", want, cp)
		}
	}
	if strings.Contains(cp, `cat > "$dir/pki/ca-key.pem"`) {
		t.Errorf("control-plane user data writes a CA key:\n%s", cp)
	}
	if out, err := exec.Command("sh", "-n", "-c", cp).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v %s\n%s", err, out, cp)
	}
}
