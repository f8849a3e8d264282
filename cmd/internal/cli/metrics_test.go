package cli

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/cmd/internal/serve"
)

// curl $PODVISOR_UI_URL/metrics: after a pod has gone through the pipeline
// and migrated, the exposition has bus handler histograms for every service.
func TestMetricsOnStatusPortCoverEveryService(t *testing.T) {
	dir := upWithTracing(t)
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: m1, namespace: metrics}\nspec: {containers: [{name: a, image: " +
		vars["PODVISOR_REGISTRY"] + "/podvisor/base:1.0}]}\n"
	if out, errOut, code := run(t, dir, pod, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	eventually(t, "pod m1's VM running", func() bool {
		out, _, _ := run(t, dir, "", "get", "pod", "m1", "-n", "metrics", "-o", `jsonpath={.status.conditions[?(@.type=="VMReady")].status}`)
		return out == "True"
	})
	// The migration service handles migrations only: move the pod once.
	if out, errOut, code := run(t, dir, "", "migrate", "pod", "m1", "-n", "metrics"); code != 0 {
		t.Fatalf("migrate: exit %d: %s %s", code, out, errOut)
	}
	var body string
	var missing []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("services without a handler histogram: %v", missing)
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "podvisor_bus_deliveries_total") {
					t.Log(l)
				}
			}
		}
	})
	// The status port speaks TLS with a certificate from up's CA, the one
	// the env file names for NATS.
	caPEM, err := os.ReadFile(vars["PODVISOR_NATS_CA"])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", vars["PODVISOR_NATS_CA"])
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	eventually(t, "handler histograms of every service", func() bool {
		resp, err := client.Get(vars["PODVISOR_UI_URL"] + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		missing = nil
		for _, svc := range []string{"scheduler", "provisioner", "imagecache", "netconfig", "migration"} {
			if !hasSeries(body, "podvisor_bus_handler_duration_seconds_bucket", `service="`+svc+`"`) {
				missing = append(missing, svc)
			}
		}
		return len(missing) == 0
	})
	for _, name := range []string{"podvisor_bus_deliveries_total", "podvisor_bus_acks_total", "podvisor_bus_consumer_pending_messages"} {
		if !hasSeries(body, name, `service="provisioner"`) {
			t.Errorf("/metrics lacks %s for the provisioner", name)
		}
	}
}

func hasSeries(body, name, label string) bool {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, label) {
			return true
		}
	}
	return false
}
