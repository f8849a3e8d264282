package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The Grafana dashboard is valid JSON whose queries use only metrics that
// docs/metrics.md documents (so a renamed metric cannot leave a panel empty
// without this test failing), and every bus metric has a panel.
func TestGrafanaDashboardUsesDocumentedMetrics(t *testing.T) {
	root := repoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "grafana", "podvisor.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("podvisor.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard lacks a title, uid or panels")
	}
	docs, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`podvisor_[a-z_]+`)
	documented := map[string]bool{}
	for _, n := range name.FindAllString(string(docs), -1) {
		documented[n] = true
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range name.FindAllString(tg.Expr, -1) {
				base := n
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					base = strings.TrimSuffix(base, suffix)
				}
				used[base] = true
				if !documented[base] {
					t.Errorf("panel %q queries %s, which docs/metrics.md does not list", p.Title, n)
				}
			}
		}
	}
	for n := range documented {
		if strings.HasPrefix(n, "podvisor_bus_") && !used[n] {
			t.Errorf("no panel shows %s", n)
		}
	}
}
