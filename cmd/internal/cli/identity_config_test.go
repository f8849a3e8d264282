package cli

import (
	"os"
	"path/filepath"
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
