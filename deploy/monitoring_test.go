package deploy

import (
	"strconv"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Prometheus finds every service's /metrics both ways: the ServiceMonitor
// selects each service's Service and names its health port, and the pods
// carry scrape annotations that point at the same port.
func TestMetricsAreScraped(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		objs := build(t, "overlays/"+overlay)
		monitors := objectsOf[*monitoringv1.ServiceMonitor](objs)
		if len(monitors) != 1 {
			t.Fatalf("%s: %d ServiceMonitors, want 1", overlay, len(monitors))
		}
		sm := monitors[0]
		sel := labels.SelectorFromSet(sm.Spec.Selector.MatchLabels)
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "health" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("%s: ServiceMonitor endpoints %+v; want port health, path /metrics", overlay, sm.Spec.Endpoints)
		}
		selected := map[string]bool{}
		for _, svc := range objectsOf[*corev1.Service](objs) {
			if !sel.Matches(labels.Set(svc.Labels)) {
				continue
			}
			selected[svc.Name] = true
			hasHealth := false
			for _, p := range svc.Spec.Ports {
				hasHealth = hasHealth || p.Name == "health"
			}
			if !hasHealth {
				t.Errorf("%s: Service %s is selected by the ServiceMonitor but has no health port", overlay, svc.Name)
			}
		}
		for _, s := range services {
			if !selected[s] {
				t.Errorf("%s: the ServiceMonitor does not select the %s Service", overlay, s)
			}
			w := findWorkload(t, objs, s)
			a := w.template.Annotations
			port, _ := containerPort(w.template, "health")
			if a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" || a["prometheus.io/port"] != strconv.Itoa(int(port)) {
				t.Errorf("%s: %s pod annotations %v; want prometheus.io/scrape true, path /metrics, port %d", overlay, s, a, port)
			}
		}
	}
}
