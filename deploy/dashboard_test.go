package deploy

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The production dashboard: `podvisor serve dashboard` behind mutual TLS
// (its certificate and its users' CA from the Secret podvisor-dashboard-tls),
// as its own read-only identities (the NATS creds file dashboard.creds and
// nothing else of the creds Secret, the Redis user dashboard), with no
// vCenter account, a Service for its TLS port, and replicas spread like the
// services'.
func TestProdDashboard(t *testing.T) {
	objs := build(t, "overlays/prod")
	w := findWorkload(t, objs, "dashboard")
	if len(w.template.Spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", w, len(w.template.Spec.Containers))
	}
	c := w.template.Spec.Containers[0]
	if !slices.Equal(c.Args, []string{"serve", "dashboard"}) {
		t.Errorf("%s: args %q, want serve dashboard", w, c.Args)
	}
	env := func(name string) string {
		e, _ := envValue(c, name)
		return e.Value
	}
	mountOf := func(path string) (corev1.Volume, bool) {
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(path, m.MountPath+"/") {
				i := slices.IndexFunc(w.template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
				if i >= 0 {
					return w.template.Spec.Volumes[i], true
				}
			}
		}
		return corev1.Volume{}, false
	}
	// Each TLS file is a key of podvisor-dashboard-tls.
	for name, key := range map[string]string{"PODVISOR_DASHBOARD_TLS_CERT": "tls.crt", "PODVISOR_DASHBOARD_TLS_KEY": "tls.key", "PODVISOR_DASHBOARD_CLIENT_CA": "ca.crt"} {
		v, ok := mountOf(env(name))
		if !ok || v.Secret == nil || v.Secret.SecretName != "podvisor-dashboard-tls" ||
			!slices.ContainsFunc(v.Secret.Items, func(it corev1.KeyToPath) bool { return it.Key == key && strings.HasSuffix(env(name), "/"+it.Path) }) {
			t.Errorf("%s: %s = %q is not key %s of the Secret podvisor-dashboard-tls", w, name, env(name), key)
		}
	}
	if port, ok := containerPort(w.template, "https"); !ok || !strings.HasSuffix(env("PODVISOR_DASHBOARD_ADDR"), ":"+strconv.Itoa(int(port))) {
		t.Errorf("%s: port https %d, PODVISOR_DASHBOARD_ADDR %q", w, port, env("PODVISOR_DASHBOARD_ADDR"))
	}
	// Its own NATS identity, and only that creds file.
	creds, ok := mountOf(env("PODVISOR_NATS_CREDS"))
	if !ok || creds.Secret == nil || !strings.HasSuffix(env("PODVISOR_NATS_CREDS"), "/dashboard.creds") ||
		len(creds.Secret.Items) != 1 || creds.Secret.Items[0].Key != "dashboard.creds" {
		t.Errorf("%s: PODVISOR_NATS_CREDS %q must be the only key it mounts, dashboard.creds", w, env("PODVISOR_NATS_CREDS"))
	}
	if !strings.HasPrefix(env("PODVISOR_NATS_URL"), "tls://") || env("PODVISOR_NATS_CA") == "" {
		t.Errorf("%s: NATS over TLS: URL %q CA %q", w, env("PODVISOR_NATS_URL"), env("PODVISOR_NATS_CA"))
	}
	// Its own Redis user, read-only.
	u, err := url.Parse(env("PODVISOR_REDIS_URL"))
	if err != nil || u.Scheme != "rediss" || u.User.Username() != "dashboard" {
		t.Errorf("%s: PODVISOR_REDIS_URL %q, want rediss:// as the user dashboard", w, env("PODVISOR_REDIS_URL"))
	}
	if v, ok := mountOf(env("PODVISOR_REDIS_PASSWORD_FILE")); !ok || v.Secret == nil || len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != "dashboard-password" {
		t.Errorf("%s: PODVISOR_REDIS_PASSWORD_FILE must mount only dashboard-password", w)
	}
	// No vCenter: neither its account nor its URL.
	for _, v := range w.template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "podvisor-vcenter" {
			t.Errorf("%s mounts the vCenter account", w)
		}
	}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "GOVC_") {
			t.Errorf("%s: %s is set; the dashboard talks to no vCenter", w, e.Name)
		}
	}
	found := false
	for _, s := range objectsOf[*corev1.Service](objs) {
		if matches(s.Spec.Selector, w.template.Labels) {
			found = found || slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.TargetPort.StrVal == "https" })
		}
	}
	if !found {
		t.Errorf("no Service exposes %s's https port", w)
	}
	if w.replicas < 2 || !spreadsOwnPods(w.template) {
		t.Errorf("%s: %d replicas, spread %v; want at least 2 spread over nodes", w, w.replicas, spreadsOwnPods(w.template))
	}
	// The dev overlay has none: `podvisor up` serves its own status page.
	for _, dw := range workloads(build(t, "overlays/dev")) {
		if dw.name == "dashboard" {
			t.Error("the dev overlay runs a dashboard Deployment; the simulator's `up` serves the page")
		}
	}
}
