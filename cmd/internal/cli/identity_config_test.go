package cli

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// `identity server-config` gives the Kubernetes NATS a resolver that keeps
// pushed accounts (revocations) in a directory on the StatefulSet's data
// volume, so a revocation outlives a restart of the pod; --jwt-dir ""
// keeps them in memory, as before.
func TestServerConfigKeepsAccountsOnTheNATSVolume(t *testing.T) {
	dir := t.TempDir()
	auth := filepath.Join(dir, "nats-auth")
	if _, errOut, code := run(t, dir, "", "identity", "--dir", auth, "mint-all"); code != 0 {
		t.Fatalf("mint-all: %d %s", code, errOut)
	}
	out, errOut, code := run(t, dir, "", "identity", "--dir", auth, "server-config")
	if code != 0 {
		t.Fatalf("server-config: %d %s", code, errOut)
	}
	if !strings.Contains(out, "type: full") || !strings.Contains(out, `dir: "/data/jwt"`) {
		t.Fatalf("server-config keeps no accounts on disk:\n%s", out)
	}
	sts, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "k8s", "base", "nats", "statefulset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sts), "mountPath: /data\n") {
		t.Error("the NATS StatefulSet mounts no volume at /data, where the resolver keeps the accounts")
	}
	// nats-server reads it (the directory is made at start, not here).
	conf := filepath.Join(dir, "auth.conf")
	if err := os.WriteFile(conf, []byte(strings.Replace(out, "/data/jwt", filepath.Join(dir, "jwt"), 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := server.ProcessConfigFile(conf); err != nil {
		t.Fatalf("nats-server cannot read it: %v", err)
	}
	mem, _, code := run(t, dir, "", "identity", "--dir", auth, "server-config", "--jwt-dir", "")
	if code != 0 || !strings.Contains(mem, "resolver: MEMORY") {
		t.Errorf("--jwt-dir \"\": %d\n%s", code, mem)
	}
}

// identity tls issues the host agents' concentrator its certificate, for
// its Services' names and the addresses the hypervisor hosts reach it at.
func TestIdentityTLSCoversTheConcentrator(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "tls")
	if o, errOut, code := run(t, dir, "", "identity", "tls", "--out", out, "--concentrator", "192.0.2.7", "--concentrator", "concentrator.example"); code != 0 {
		t.Fatalf("identity tls: exit %d: %s %s", code, o, errOut)
	}
	b, err := os.ReadFile(filepath.Join(out, "hostagent.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("hostagent.pem holds no PEM block")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("192.0.2.7")) ||
		!slices.Contains(cert.DNSNames, "concentrator.example") || !slices.Contains(cert.DNSNames, "hostagent-concentrator.podvisor.svc") {
		t.Errorf("the concentrator's certificate names %v and %v; want 192.0.2.7, concentrator.example and its Service", cert.IPAddresses, cert.DNSNames)
	}
}

// `identity mint admin` (client permissions by default) must not replace
// admin.creds behind its holder's back: it refuses an existing creds file
// unless --force.
func TestMintRefusesToOverwriteCreds(t *testing.T) {
	dir := t.TempDir()
	auth := filepath.Join(dir, "nats-auth")
	if _, errOut, code := run(t, dir, "", "identity", "--dir", auth, "mint-all"); code != 0 {
		t.Fatalf("mint-all: %d %s", code, errOut)
	}
	admin := filepath.Join(auth, "admin.creds")
	before, err := os.ReadFile(admin)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, dir, "", "identity", "--dir", auth, "mint", "admin")
	if code == 0 || out != "" || !strings.Contains(errOut, admin) || !strings.Contains(errOut, "--force") {
		t.Errorf("mint admin over admin.creds: exit %d, stdout %q, stderr %q; want a refusal naming %s and --force", code, out, errOut, admin)
	}
	if after, _ := os.ReadFile(admin); string(after) != string(before) {
		t.Error("mint admin without --force changed admin.creds")
	}
	if out, errOut, code := run(t, dir, "", "identity", "--dir", auth, "mint", "ci-robot"); code != 0 || strings.TrimSpace(out) != filepath.Join(auth, "ci-robot.creds") {
		t.Errorf("mint ci-robot: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out, errOut, code := run(t, dir, "", "identity", "--dir", auth, "mint", "admin", "--force"); code != 0 || strings.TrimSpace(out) != admin {
		t.Errorf("mint admin --force: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if after, _ := os.ReadFile(admin); string(after) == string(before) {
		t.Error("mint admin --force left admin.creds as it was (admin permissions)")
	}
	if out, _, _ := run(t, dir, "", "identity", "mint", "--help"); !strings.Contains(out, "--force") {
		t.Errorf("identity mint --help does not document --force:\n%s", out)
	}
}
