package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// TestServeHostAgent runs `podvisor serve hostagent` beside `podvisor up`
// as a deployment does: one process serving the hosts
// PODVISOR_HOSTAGENT_HOST lists, as the host agent's own identity. It
// listens for each host's guest channels, answers that host's queries from
// the pod records, and leaves no socket behind when stopped.
func TestServeHostAgent(t *testing.T) {
	_, dir := upForTest(t, "none")
	channels, err := os.MkdirTemp("", "pvch-") // sockets want a short path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(channels) })
	hosts := []string{"esx-1-01", "esx-1-02"}
	for _, k := range []string{"PODVISOR_NATS_URL", "PODVISOR_NATS_CREDS", "PODVISOR_NATS_CA"} {
		t.Setenv(k, "")
		os.Unsetenv(k) // the env file of up supplies them, as beside a local up
	}
	t.Setenv("PODVISOR_CONFIG", filepath.Join(dir, "no-cli-config"))
	t.Setenv("PODVISOR_HEALTH_ADDR", "127.0.0.1:0")
	t.Setenv(hostagent.EnvChannelDir, channels)

	t.Run("without a host it refuses, naming the setting", func(t *testing.T) {
		t.Setenv(hostagent.EnvHost, "")
		var errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if code := Main(ctx, []string{"--state-dir", dir, "serve", "hostagent"}, strings.NewReader(""), &bytes.Buffer{}, &errOut); code == 0 ||
			!strings.Contains(errOut.String(), hostagent.EnvHost) {
			t.Fatalf("exit %d, stderr %q; want a failure naming %s", code, errOut.String(), hostagent.EnvHost)
		}
	})

	t.Setenv(hostagent.EnvHost, strings.Join(hosts, ","))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var errOut syncbuf.Buffer
	go func() {
		done <- Main(ctx, []string{"--state-dir", dir, "serve", "hostagent"}, strings.NewReader(""), &bytes.Buffer{}, &errOut)
	}()
	for _, h := range hosts {
		sock := guest.HostSocket(channels, h)
		eventuallyWithin(t, 20*time.Second, "the host agent of "+h+" listening on "+sock, func() bool {
			fi, err := os.Stat(sock)
			return err == nil && fi.Mode()&os.ModeSocket != 0
		})
	}

	// Each host's query subject is answered, from the pod records.
	vars, err := serve.ReadEnvFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	nc := natsForTest(t, vars)
	req, _ := json.Marshal(events.PodLogsRequest{Namespace: "default", Name: "ghost"})
	for _, h := range hosts {
		msg, err := nc.Request(events.SubjectPodLogs(h), req, 5*time.Second)
		if err != nil {
			t.Fatalf("logs query to %s: %v", h, err)
		}
		var m events.PodStreamMessage
		if err := json.Unmarshal(msg.Data, &m); err != nil || !m.EOF || !strings.Contains(m.Error, "default/ghost not found") {
			t.Errorf("%s answered %s (%v), want that default/ghost does not exist", h, msg.Data, err)
		}
	}

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve hostagent stopped with exit %d: %s", code, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve hostagent did not stop within 20s")
	}
	for _, h := range hosts {
		if _, err := os.Stat(guest.HostSocket(channels, h)); !os.IsNotExist(err) {
			t.Errorf("socket of %s left behind (%v)", h, err)
		}
	}
}

// TestUpRefusesPerHostServices: the host agent is not one of up's
// --services (up runs one per simulated host itself).
func TestUpRefusesPerHostServices(t *testing.T) {
	_, errOut, code := run(t, t.TempDir(), "", "up", "--services", "provisioner,hostagent")
	if code == 0 || !strings.Contains(errOut, "hostagent runs per host") {
		t.Fatalf("up --services provisioner,hostagent: exit %d, stderr %q; want a refusal saying why", code, errOut)
	}
}
