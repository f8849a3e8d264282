package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeReadsItsOwnSettingsFromTheEnvFile: `podvisor serve` takes the
// settings the environment leaves unset from the env file of the state
// dir, its own as well as the services': the env file of an `up` with
// replicated streams names their replicas, and serve declares streams with
// them. A bad value is refused, named, before any connection is made.
func TestServeReadsItsOwnSettingsFromTheEnvFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "env"), []byte("export PODVISOR_STREAM_REPLICAS=9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PODVISOR_STREAM_REPLICAS", "")
	os.Unsetenv("PODVISOR_STREAM_REPLICAS") // the env file supplies it
	t.Setenv("PODVISOR_CONFIG", filepath.Join(dir, "no-cli-config"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var errOut bytes.Buffer
	code := Main(ctx, []string{"--state-dir", dir, "serve", "scheduler"}, strings.NewReader(""), &bytes.Buffer{}, &errOut)
	if code == 0 || !strings.Contains(errOut.String(), `PODVISOR_STREAM_REPLICAS="9": want a number of replicas from 1 to 5`) {
		t.Fatalf("exit %d, stderr %q; want the env file's PODVISOR_STREAM_REPLICAS refused", code, errOut.String())
	}
}
