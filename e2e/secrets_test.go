//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// secrets are the generated passwords and keys of the system: the vCenter
// and Redis passwords, the NATS operator, account and user seeds, and the
// TLS private keys. The env file and the state dir's key files hold them on
// purpose; nothing else may.
func (s *system) secrets(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range []string{"vcenter-password", "redis-imagecache-password", "redis-scheduler-password"} {
		if b, err := os.ReadFile(filepath.Join(s.dir, name)); err == nil && strings.TrimSpace(string(b)) != "" {
			out[name] = strings.TrimSpace(string(b))
		}
	}
	files, _ := filepath.Glob(filepath.Join(s.dir, "nats-auth", "*"))
	keys, _ := filepath.Glob(filepath.Join(s.dir, "tls", "*-key.pem"))
	for _, f := range append(files, keys...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			// nkey seeds (S...), and the base64 lines of PEM keys.
			if (strings.HasPrefix(line, "SO") || strings.HasPrefix(line, "SA") || strings.HasPrefix(line, "SU")) && len(line) > 50 ||
				strings.HasSuffix(f, "-key.pem") && len(line) > 40 && !strings.HasPrefix(line, "-----") {
				out[filepath.Base(f)+":"+line[:8]] = line
			}
		}
	}
	if len(out) < 5 {
		t.Fatalf("found only %d generated secrets in %s: %v", len(out), s.dir, keysOf(out))
	}
	return out
}

func keysOf(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	return k
}

// checkNoSecrets reads every log line of the run, every CLI output, every
// message of every stream (events, dead letters, KV values) and the status
// page, and fails on any generated secret in them.
func (s *system) checkNoSecrets(t *testing.T) {
	t.Helper()
	secrets := s.secrets(t)
	type text struct{ where, body string }
	var texts []text
	logs, _ := filepath.Glob(filepath.Join(s.dir, "*.log"))
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, text{filepath.Base(f), string(b)})
	}
	s.mu.Lock()
	for i, o := range s.outputs {
		texts = append(texts, text{fmt.Sprintf("CLI output %d", i), o})
	}
	s.mu.Unlock()

	// As admin: a client identity may not read every bucket (guest cluster
	// kubeconfigs), and a refused read would only time out.
	admin := append(s.natsOpts(), nats.UserCredentials(filepath.Join(s.dir, "nats-auth", "admin.creds")))
	_, js := connectNATS(t, s.env["PODVISOR_NATS_URL"], admin...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	streams := js.StreamNames(ctx)
	n := 0
	for name := range streams.Name() {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info := st.CachedInfo().State
		for seq := info.FirstSeq; info.Msgs > 0 && seq <= info.LastSeq; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				continue // deleted or purged
			}
			texts = append(texts, text{fmt.Sprintf("%s #%d", name, seq), messageText(m)})
			n++
		}
	}
	if err := streams.Err(); err != nil {
		t.Fatal(err)
	}
	page := s.statusPage(t)
	texts = append(texts, text{"status page", page})
	t.Logf("checked %d log files, %d CLI outputs, %d stream messages and the status page (%d bytes) for %d secrets",
		len(logs), len(s.outputs), n, len(page), len(secrets))
	for _, tx := range texts {
		for name, secret := range secrets {
			if strings.Contains(tx.body, secret) {
				t.Errorf("%s carries the secret %s", tx.where, name)
			}
		}
	}
}

func messageText(m *jetstream.RawStreamMsg) string {
	var b strings.Builder
	b.WriteString(m.Subject)
	for k, vs := range m.Header {
		b.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
	}
	b.Write(m.Data)
	return b.String()
}

// statusPage fetches the status page over TLS, verified against the CA.
func (s *system) statusPage(t *testing.T) string {
	t.Helper()
	pem, err := os.ReadFile(s.env["PODVISOR_NATS_CA"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get(s.env["PODVISOR_UI_URL"])
	if err != nil {
		t.Fatalf("status page: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status page: %d %v", resp.StatusCode, err)
	}
	return string(b)
}
