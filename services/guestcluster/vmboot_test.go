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
