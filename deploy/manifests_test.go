package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podvisor/podvisor/deploy/internal/manifests"
)

// Every kustomization builds and every object in it decodes strictly with
// the Kubernetes API types (build fails otherwise).
func TestKustomizationsBuildStrictly(t *testing.T) {
	for _, dir := range []string{"base", "base/nats", "overlays/dev", "overlays/tilt", "overlays/prod"} {
		t.Run(dir, func(t *testing.T) {
			objs := build(t, dir)
			if len(objs) == 0 {
				t.Fatal("no objects")
			}
			seen := map[string]bool{}
			for _, o := range objs {
				if seen[o.String()] {
					t.Errorf("%s appears twice", o)
				}
				seen[o.String()] = true
			}
		})
	}
}

// The restricted Pod Security Standard, plus what this project asks on top:
// read-only root filesystems, probes, requests and limits, no service account
// token, a /tmp for the podvisor image.
func TestWorkloadsAreRestrictedAndProbed(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		objs := build(t, "overlays/"+overlay)
		for _, w := range workloads(objs) {
			t.Run(overlay+"/"+w.String(), func(t *testing.T) {
				for _, err := range podProblems(w.template.Spec) {
					t.Error(err)
				}
			})
		}
	}
}

func podProblems(spec corev1.PodSpec) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		add("pod securityContext.runAsNonRoot must be true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		add("pod securityContext.seccompProfile.type must be RuntimeDefault")
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		add("pod securityContext.runAsUser is 0 (root)")
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		add("host namespaces are not allowed")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		add("automountServiceAccountToken must be false: no podvisor process calls the Kubernetes API")
	}
	if spec.ServiceAccountName == "" {
		add("serviceAccountName is not set (the default account would be used)")
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			add("volume %s: hostPath is not allowed", v.Name)
		}
	}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for i, c := range all {
		isInit := i < len(spec.InitContainers)
		prefix := "container " + c.Name + ": "
		sc := c.SecurityContext
		switch {
		case sc == nil:
			add("%sno securityContext", prefix)
			continue
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			add("%ssecurityContext.allowPrivilegeEscalation must be false", prefix)
		}
		if sc.Privileged != nil && *sc.Privileged {
			add("%sprivileged", prefix)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			add("%ssecurityContext.capabilities.drop must contain ALL", prefix)
		} else if len(sc.Capabilities.Add) > 0 {
			add("%sadds capabilities %v", prefix, sc.Capabilities.Add)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			add("%ssecurityContext.readOnlyRootFilesystem must be true", prefix)
		}
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			add("%ssecurityContext.runAsNonRoot must be true", prefix)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			add("%ssecurityContext.seccompProfile.type must be RuntimeDefault", prefix)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			add("%sruns as root", prefix)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, hasReq := c.Resources.Requests[r]
			lim, hasLim := c.Resources.Limits[r]
			if !hasReq || !hasLim {
				add("%sresources.requests and .limits must both set %s", prefix, r)
				continue
			}
			if req.Cmp(lim) > 0 {
				add("%s%s request %s is above its limit %s", prefix, r, req.String(), lim.String())
			}
		}
		if isInit {
			continue // init containers run to completion; probes do not apply
		}
		if c.LivenessProbe == nil || c.ReadinessProbe == nil {
			add("%sneeds both a livenessProbe and a readinessProbe", prefix)
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.Type == intstr.String {
				if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.HTTPGet.Port.StrVal }) {
					add("%sprobe port %q is not a port of the container", prefix, p.HTTPGet.Port.StrVal)
				}
			}
		}
		if imageRepo(c.Image) == podvisorImage && !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/tmp" }) {
			add("%sthe podvisor image needs a writable /tmp (emptyDir): its root filesystem is read-only", prefix)
		}
	}
	return errs
}

// The namespace enforces "restricted", and everything namespaced lives in it.
func TestNamespaceEnforcesRestricted(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			objs := build(t, "overlays/"+overlay)
			nss := objectsOf[*corev1.Namespace](objs)
			if len(nss) != 1 || nss[0].Name != "podvisor" {
				t.Fatalf("want exactly the Namespace podvisor, got %d namespaces", len(nss))
			}
			if got := nss[0].Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
				t.Errorf("namespace label pod-security.kubernetes.io/enforce = %q, want restricted", got)
			}
			for _, o := range objs {
				if o.Kind != "Namespace" && o.Namespace != "podvisor" {
					t.Errorf("%s is not in the podvisor namespace", o)
				}
			}
		})
	}
}

// Common labels: part-of on everything; name and component on the workloads,
// their pods, Services, ServiceAccounts and PodDisruptionBudgets.
func TestCommonLabels(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		objs := build(t, "overlays/"+overlay)
		for _, o := range objs {
			meta, err := metaOf(o.Object)
			if err != nil {
				t.Fatal(err)
			}
			if meta.GetLabels()["app.kubernetes.io/part-of"] != "podvisor" {
				t.Errorf("%s %s: label app.kubernetes.io/part-of is not podvisor", overlay, o)
			}
			switch o.Kind {
			case "Deployment", "StatefulSet", "Service", "ServiceAccount", "PodDisruptionBudget":
				for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/component"} {
					if meta.GetLabels()[l] == "" {
						t.Errorf("%s %s: label %s missing", overlay, o, l)
					}
				}
			}
		}
		for _, w := range workloads(objs) {
			for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"} {
				if w.template.Labels[l] == "" || w.template.Labels[l] != w.meta.Labels[l] {
					t.Errorf("%s %s: pod template label %s = %q, workload has %q", overlay, w, l, w.template.Labels[l], w.meta.Labels[l])
				}
			}
		}
	}
}

func metaOf(obj any) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no metadata", obj)
	}
	return m, nil
}

// Every service runs `podvisor serve <itself>`; every container of the
// podvisor image runs a subcommand the CLI has (services with podvisord),
// and images are pinned.
func TestContainersRunKnownCommandsAndPinnedImages(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		objs := build(t, "overlays/"+overlay)
		found := map[string]bool{}
		for _, w := range workloads(objs) {
			for _, c := range w.template.Spec.Containers {
				tag := imageTag(c.Image)
				if tag == "" || tag == "latest" {
					t.Errorf("%s %s: image %q is not pinned to a tag or digest", overlay, w, c.Image)
				}
				if imageRepo(c.Image) != podvisorImage {
					continue
				}
				if err := checkPodvisorArgs(c.Args); err != nil {
					t.Errorf("%s %s: args %q: %v", overlay, w, c.Args, err)
				}
				// A service runs podvisord, the image's services-only
				// executable (same arguments as the CLI's serve); anything
				// else runs the image's podvisor entrypoint.
				serves := len(c.Args) > 0 && c.Args[0] == "serve"
				switch {
				case serves && !slices.Equal(c.Command, []string{"/podvisord"}):
					t.Errorf("%s %s: command %q, want [/podvisord] to serve a service", overlay, w, c.Command)
				case !serves && len(c.Command) > 0:
					t.Errorf("%s %s: command %v replaces the image's podvisor entrypoint", overlay, w, c.Command)
				}
				if w.meta.Labels["app.kubernetes.io/component"] == "service" {
					if want := []string{"serve", w.name}; !slices.Equal(c.Args, want) {
						t.Errorf("%s %s: args %q, want %q", overlay, w, c.Args, want)
					}
					found[w.name] = true
				}
			}
		}
		for _, s := range services {
			if !found[s] {
				t.Errorf("%s: no Deployment runs `podvisor serve %s`", overlay, s)
			}
		}
		if overlay == "prod" {
			for _, w := range workloads(objs) {
				for _, c := range w.template.Spec.Containers {
					if imageRepo(c.Image) == podvisorImage && imageTag(c.Image) == "dev" {
						t.Errorf("prod %s runs the dev image %s", w, c.Image)
					}
				}
			}
		}
	}
}

func TestProdReplicasAndSpreading(t *testing.T) {
	objs := build(t, "overlays/prod")
	for _, w := range workloads(objs) {
		if reason, single := singleReplicaInProd[w.name]; single {
			if w.replicas != 1 {
				t.Errorf("%s: %d replicas; it is meant to run one (%s)", w, w.replicas, reason)
			}
			continue
		}
		if w.replicas < 2 {
			t.Errorf("%s: %d replicas, want at least 2 in prod", w, w.replicas)
		}
		if !spreadsOwnPods(w.template) {
			t.Errorf("%s: %d replicas but no topology spread constraint or anti-affinity that selects its own pods", w, w.replicas)
		}
	}
	if nats := findWorkload(t, objs, "nats"); nats.replicas != 3 {
		t.Errorf("NATS runs %d replicas in prod, want 3 (R3 streams)", nats.replicas)
	}
	for _, s := range services {
		w := findWorkload(t, objs, s)
		e, ok := envValue(w.template.Spec.Containers[0], "PODVISOR_STREAM_REPLICAS")
		if !ok || e.Value != "3" {
			t.Errorf("%s: PODVISOR_STREAM_REPLICAS = %q, want 3 in prod", s, e.Value)
		}
		if _, ok := envValue(w.template.Spec.Containers[0], "PODVISOR_NATS_CREDS"); !ok {
			t.Errorf("%s: PODVISOR_NATS_CREDS is not set in prod", s)
		}
	}
	for _, pdb := range objectsOf[*policyv1.PodDisruptionBudget](objs) {
		if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("PodDisruptionBudget %s: want maxUnavailable 1", pdb.Name)
		}
	}
}

// singleReplicaInProd lists the workloads that deliberately run one replica
// in prod, with the reason.
var singleReplicaInProd = map[string]string{
	"redis": "a cache: its loss costs re-scans, never a wrong pod; Redis replication would need a failover story in every client",
	"hostagent": "one process runs every host's agent behind the concentrator; two would split each host's deliveries and channels " +
		"(a restart loses nothing: the hosts connect again and each pod VM's agent resends its state)",
}

// spreadsOwnPods: a required or preferred spread/anti-affinity term whose
// selector matches the workload's own pod labels.
func spreadsOwnPods(tpl corev1.PodTemplateSpec) bool {
	for _, c := range tpl.Spec.TopologySpreadConstraints {
		if c.LabelSelector != nil && matches(c.LabelSelector.MatchLabels, tpl.Labels) {
			// matchLabelKeys narrow the selector with the pod's own values;
			// pod-template-hash is added by the Deployment controller.
			ok := true
			for _, k := range c.MatchLabelKeys {
				if _, has := tpl.Labels[k]; !has && k != "pod-template-hash" {
					ok = false
				}
			}
			if ok {
				return true
			}
		}
	}
	if a := tpl.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			if term.LabelSelector != nil && matches(term.LabelSelector.MatchLabels, tpl.Labels) {
				return true
			}
		}
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			if term.PodAffinityTerm.LabelSelector != nil && matches(term.PodAffinityTerm.LabelSelector.MatchLabels, tpl.Labels) {
				return true
			}
		}
	}
	return false
}

func TestDevOverlayWiring(t *testing.T) {
	objs := build(t, "overlays/dev")
	for _, w := range workloads(objs) {
		if w.replicas != 1 {
			t.Errorf("%s: %d replicas, want 1 in dev", w, w.replicas)
		}
	}
	if slices.ContainsFunc(workloads(objs), func(w workload) bool { return w.name == "nats" }) {
		t.Error("dev runs the NATS StatefulSet; its bus is the simulator's NATS")
	}

	sim := findWorkload(t, objs, "simulator")
	args := sim.template.Spec.Containers[0].Args
	for _, want := range []string{"up", "--services=none", "--listen=0.0.0.0"} {
		if !slices.Contains(args, want) {
			t.Errorf("simulator args %q lack %q", args, want)
		}
	}
	// The ports the simulator is told to use are the ones its container
	// declares, and the Service exposes them.
	for flagName, portName := range map[string]string{"--nats-port": "nats", "--vcenter-port": "vcenter", "--ui-port": "ui"} {
		declared, ok := containerPort(sim.template, portName)
		if !ok || !slices.Contains(args, fmt.Sprintf("%s=%d", flagName, declared)) {
			t.Errorf("simulator: %s in args %q does not match container port %s (%d)", flagName, args, portName, declared)
		}
	}
	simService := serviceNamed(t, objs, "simulator")

	jaeger := serviceNamed(t, objs, "jaeger")
	for _, s := range services {
		c := findWorkload(t, objs, s).template.Spec.Containers[0]
		natsURL, _ := envValue(c, "PODVISOR_NATS_URL")
		if want := fmt.Sprintf("nats://%s:%d", simService.Name, servicePort(simService, "nats")); natsURL.Value != want {
			t.Errorf("%s: PODVISOR_NATS_URL = %q, want %q (the simulator's NATS)", s, natsURL.Value, want)
		}
		otlp, _ := envValue(c, "OTEL_EXPORTER_OTLP_ENDPOINT")
		if want := fmt.Sprintf("http://%s:%d", jaeger.Name, servicePort(jaeger, "otlp-http")); otlp.Value != want {
			t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT = %q, want %q", s, otlp.Value, want)
		}
	}

	// The generated vCenter Secret points at the simulator, and the simulator
	// takes its password from the same Secret.
	vc := secretWithPrefix(t, objs, "podvisor-vcenter")
	if want := fmt.Sprintf("http://%s:%d/sdk", simService.Name, servicePort(simService, "vcenter")); secretValue(vc, "url") != want {
		t.Errorf("dev vCenter url = %q, want %q", secretValue(vc, "url"), want)
	}
	if !slices.ContainsFunc(sim.template.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == vc.Name }) {
		t.Errorf("the simulator does not mount %s, so its vCenter password differs from the services'", vc.Name)
	}
}

func serviceNamed(t *testing.T, objs []manifests.Object, name string) *corev1.Service {
	t.Helper()
	for _, s := range objectsOf[*corev1.Service](objs) {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no Service %s", name)
	return nil
}

func servicePort(s *corev1.Service, name string) int32 {
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return p.Port
		}
	}
	return 0
}

func secretWithPrefix(t *testing.T, objs []manifests.Object, prefix string) *corev1.Secret {
	t.Helper()
	for _, s := range objectsOf[*corev1.Secret](objs) {
		if strings.HasPrefix(s.Name, prefix+"-") || s.Name == prefix {
			return s
		}
	}
	t.Fatalf("no Secret %s", prefix)
	return nil
}

func secretValue(s *corev1.Secret, key string) string {
	if v, ok := s.StringData[key]; ok {
		return v
	}
	return string(s.Data[key])
}

// expectedSecrets are the Secrets prod expects to exist (created by the
// operator, never committed), with the keys it reads from each.
var expectedSecrets = map[string][]string{
	"podvisor-vcenter":       {"url", "username", "password"},
	"podvisor-redis-acl":     {"users.acl", "probe-password", "imagecache-password", "scheduler-password", "dashboard-password"},
	"podvisor-redis-tls":     {"tls.crt", "tls.key", "ca.crt"},
	"podvisor-nats-auth":     {"auth.conf"},
	"podvisor-nats-creds":    {"scheduler.creds", "provisioner.creds", "imagecache.creds", "netconfig.creds", "migration.creds", "hostagent.creds", "dashboard.creds"},
	"podvisor-nats-tls":      {"tls.crt", "tls.key", "ca.crt"},
	"podvisor-dashboard-tls": {"tls.crt", "tls.key", "ca.crt"},
	"podvisor-channel-key":   {"channel.key"},
	"podvisor-hostagent-tls": {"tls.crt", "tls.key"},
}

// Every reference resolves: Secrets and their keys, ConfigMaps, service
// accounts, Service selectors and target ports, PDB selectors. In prod the
// Secrets not in the output are exactly the documented ones.
func TestReferencesResolve(t *testing.T) {
	docs, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "deploy.md"))
	if err != nil {
		t.Fatalf("docs/deploy.md: %v", err)
	}
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			objs := build(t, "overlays/"+overlay)
			secrets := map[string]*corev1.Secret{}
			for _, s := range objectsOf[*corev1.Secret](objs) {
				secrets[s.Name] = s
			}
			configMaps := map[string]bool{}
			for _, c := range objectsOf[*corev1.ConfigMap](objs) {
				configMaps[c.Name] = true
			}
			accounts := map[string]bool{}
			for _, sa := range objectsOf[*corev1.ServiceAccount](objs) {
				accounts[sa.Name] = true
				if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
					t.Errorf("ServiceAccount %s: automountServiceAccountToken must be false", sa.Name)
				}
			}
			external := map[string]map[string]bool{}
			useSecret := func(who, name, key string) {
				if s, ok := secrets[name]; ok {
					if key != "" && secretValue(s, key) == "" {
						t.Errorf("%s: Secret %s has no key %q", who, name, key)
					}
					return
				}
				if overlay != "prod" {
					t.Errorf("%s: Secret %s is not in the %s overlay", who, name, overlay)
					return
				}
				keys, ok := expectedSecrets[name]
				if !ok {
					t.Errorf("%s: Secret %s is neither generated nor one of the documented expected Secrets", who, name)
					return
				}
				if key != "" && !slices.Contains(keys, key) {
					t.Errorf("%s: key %q of Secret %s is not documented", who, key, name)
				}
				if external[name] == nil {
					external[name] = map[string]bool{}
				}
				external[name][key] = true
			}
			for _, w := range workloads(objs) {
				spec := w.template.Spec
				if !accounts[spec.ServiceAccountName] {
					t.Errorf("%s: ServiceAccount %q does not exist", w, spec.ServiceAccountName)
				}
				for _, v := range spec.Volumes {
					switch {
					case v.Secret != nil:
						for _, it := range v.Secret.Items {
							useSecret(w.String(), v.Secret.SecretName, it.Key)
						}
						if len(v.Secret.Items) == 0 {
							useSecret(w.String(), v.Secret.SecretName, "")
						}
					case v.ConfigMap != nil && !configMaps[v.ConfigMap.Name]:
						t.Errorf("%s: ConfigMap %s does not exist", w, v.ConfigMap.Name)
					}
				}
				for _, c := range spec.Containers {
					for _, e := range c.Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
							useSecret(w.String(), e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
						}
					}
					for _, m := range c.VolumeMounts {
						if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) &&
							!slices.ContainsFunc(w.claims, func(p corev1.PersistentVolumeClaim) bool { return p.Name == m.Name }) {
							t.Errorf("%s: volumeMount %s has no volume", w, m.Name)
						}
					}
				}
			}
			if overlay == "prod" {
				for name, keys := range expectedSecrets {
					if external[name] == nil {
						t.Errorf("documented Secret %s is not used by prod", name)
					}
					if !strings.Contains(string(docs), name) {
						t.Errorf("docs/deploy.md does not mention the Secret %s that prod expects", name)
					}
					for _, k := range keys {
						if !strings.Contains(string(docs), k) {
							t.Errorf("docs/deploy.md does not mention key %s of Secret %s", k, name)
						}
					}
				}
			}

			ws := workloads(objs)
			for _, s := range objectsOf[*corev1.Service](objs) {
				var selected []workload
				for _, w := range ws {
					if matches(s.Spec.Selector, w.template.Labels) {
						selected = append(selected, w)
					}
				}
				if len(selected) != 1 {
					t.Errorf("Service %s selects %d workloads, want 1", s.Name, len(selected))
					continue
				}
				for _, p := range s.Spec.Ports {
					if p.TargetPort.Type == intstr.String {
						if _, ok := containerPort(selected[0].template, p.TargetPort.StrVal); !ok {
							t.Errorf("Service %s: targetPort %q is not a port of %s", s.Name, p.TargetPort.StrVal, selected[0])
						}
					}
				}
			}
			for _, pdb := range objectsOf[*policyv1.PodDisruptionBudget](objs) {
				n := 0
				for _, w := range ws {
					if matches(pdb.Spec.Selector.MatchLabels, w.template.Labels) {
						n++
					}
				}
				if n != 1 {
					t.Errorf("PodDisruptionBudget %s selects %d workloads, want 1", pdb.Name, n)
				}
			}
			for _, s := range services {
				if !slices.ContainsFunc(objectsOf[*policyv1.PodDisruptionBudget](objs), func(p *policyv1.PodDisruptionBudget) bool { return p.Name == s }) {
					t.Errorf("service %s has no PodDisruptionBudget", s)
				}
			}
		})
	}
}

// Each service's health port is named `health` and is 8081, where
// PODVISOR_HEALTH_ADDR makes it listen.
func TestHealthPort(t *testing.T) {
	objs := build(t, "overlays/prod")
	for _, s := range services {
		w := findWorkload(t, objs, s)
		port, ok := containerPort(w.template, "health")
		addr, _ := envValue(w.template.Spec.Containers[0], "PODVISOR_HEALTH_ADDR")
		if !ok || port != 8081 || addr.Value != ":8081" {
			t.Errorf("%s: health port %d (named: %v), PODVISOR_HEALTH_ADDR %q; want 8081 named health and :8081", s, port, ok, addr.Value)
		}
		if p := w.template.Spec.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: readiness probe must GET /readyz", s)
		}
		if p := w.template.Spec.Containers[0].LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("%s: liveness probe must GET /healthz", s)
		}
	}
}

// Volumes that hold data are sized: emptyDirs have a sizeLimit, claims a request.
func TestStorageIsBounded(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		for _, w := range workloads(build(t, "overlays/"+overlay)) {
			for _, v := range w.template.Spec.Volumes {
				if v.EmptyDir != nil && (v.EmptyDir.SizeLimit == nil || v.EmptyDir.SizeLimit.Cmp(resource.MustParse("0")) <= 0) {
					t.Errorf("%s %s: emptyDir %s has no sizeLimit", overlay, w, v.Name)
				}
			}
			for _, c := range w.claims {
				if _, ok := c.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
					t.Errorf("%s %s: volumeClaimTemplate %s requests no storage", overlay, w, c.Name)
				}
			}
		}
	}
	prod := build(t, "overlays/prod")
	for _, name := range []string{"nats", "redis"} {
		if w := findWorkload(t, prod, name); len(w.claims) == 0 {
			t.Errorf("prod %s keeps its data on no PersistentVolumeClaim", w)
		}
	}
}

// The migration service's limits are per replica (its admission queue is
// in memory), so the prod values times the replica count must stay within
// the service's defaults: 2 migrations per source host, 5 per cluster.
func TestProdMigrationLimitsHoldAcrossReplicas(t *testing.T) {
	// The migration service runs active/standby under a lease (only the
	// leader migrates), so its limits apply to the whole deployment whatever
	// the replica count: a limit set in the overlay must not exceed the
	// service's defaults.
	w := findWorkload(t, build(t, "overlays/prod"), "migration")
	if w.replicas < 2 {
		t.Errorf("migration: %d replicas, want a standby (>= 2)", w.replicas)
	}
	for env, max := range map[string]int{"PODVISOR_MIGRATION_MAX_PER_HOST": 2, "PODVISOR_MIGRATION_MAX_PER_CLUSTER": 5} {
		e, ok := envValue(w.template.Spec.Containers[0], env)
		if !ok {
			continue // the service default applies
		}
		n, err := strconv.Atoi(e.Value)
		if err != nil || n < 1 || n > max {
			t.Errorf("migration: %s = %q, want 1..%d", env, e.Value, max)
		}
	}
}

// Against a real vCenter a pod VM boots the image `podvisor install`
// uploads: the prod provisioner names its disk (a placeholder to edit, in
// the form the provisioner accepts); dev runs on the simulated datacenter,
// whose guests boot nothing, and names none.
func TestProdProvisionerNamesTheBootDisk(t *testing.T) {
	c := findWorkload(t, build(t, "overlays/prod"), "provisioner").template.Spec.Containers[0]
	e, ok := envValue(c, "PODVISOR_PROVISIONER_BOOT_DISK")
	if !ok || !regexp.MustCompile(`^\[[^]]+\] podvisor/boot-[0-9a-f]{12}/podvm\.vmdk$`).MatchString(e.Value) {
		t.Errorf("prod provisioner: PODVISOR_PROVISIONER_BOOT_DISK = %q (set: %v), want [DS] podvisor/boot-<digest12>/podvm.vmdk", e.Value, ok)
	}
	for _, other := range []string{"PODVISOR_STREAM_REPLICAS", "PODVISOR_NATS_URL"} {
		if _, ok := envValue(c, other); !ok {
			t.Errorf("prod provisioner lost %s: the boot disk's patch must add to the services' settings, not replace them", other)
		}
	}
	if e, ok := envValue(findWorkload(t, build(t, "overlays/dev"), "provisioner").template.Spec.Containers[0], "PODVISOR_PROVISIONER_BOOT_DISK"); ok {
		t.Errorf("dev provisioner: PODVISOR_PROVISIONER_BOOT_DISK = %q on the simulated datacenter", e.Value)
	}
	// The scheduler places pods only where that disk's datastore is: the
	// two settings name the same datastore.
	ds := strings.TrimPrefix(strings.SplitN(e.Value, "]", 2)[0], "[")
	sc := findWorkload(t, build(t, "overlays/prod"), "scheduler").template.Spec.Containers[0]
	if r, ok := envValue(sc, "PODVISOR_SCHEDULER_REQUIRED_DATASTORES"); !ok || r.Value != ds {
		t.Errorf("prod scheduler: PODVISOR_SCHEDULER_REQUIRED_DATASTORES = %q (set: %v), want %q, the boot disk's datastore", r.Value, ok, ds)
	}
	if _, ok := envValue(sc, "PODVISOR_NATS_URL"); !ok {
		t.Error("prod scheduler lost PODVISOR_NATS_URL: the datastore's patch must add to the services' settings")
	}
}

// Under Tilt a service runs its own dev image through that image's
// entrypoint (the live-update restart loop around the synced binary), so
// the overlay takes away the command the base gives services.
func TestTiltServicesRunTheDevEntrypoint(t *testing.T) {
	found := 0
	for _, w := range workloads(build(t, "overlays/tilt")) {
		if w.meta.Labels["app.kubernetes.io/component"] != "service" {
			continue
		}
		found++
		c := w.template.Spec.Containers[0]
		if len(c.Command) > 0 || c.Image != podvisorImage+"-"+w.name+":dev" {
			t.Errorf("tilt %s: command %q, image %s; want no command and %s-%s:dev", w, c.Command, c.Image, podvisorImage, w.name)
		}
	}
	if found != len(services) {
		t.Errorf("tilt overlay: %d services, want %d", found, len(services))
	}
}

// Every service's Go runtime knows its container's memory limit
// (GOMEMLIMIT from limits.memory), so that it collects harder near the
// limit instead of being killed at it; the container has such a limit.
func TestServicesKnowTheirMemoryLimit(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		for _, w := range workloads(build(t, "overlays/"+overlay)) {
			if w.meta.Labels["app.kubernetes.io/component"] != "service" {
				continue
			}
			c := w.template.Spec.Containers[0]
			e, ok := envValue(c, "GOMEMLIMIT")
			if !ok || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil ||
				e.ValueFrom.ResourceFieldRef.Resource != "limits.memory" || e.ValueFrom.ResourceFieldRef.ContainerName != c.Name {
				t.Errorf("%s %s: GOMEMLIMIT %+v, want the container's limits.memory", overlay, w, e)
			}
			if c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s %s: no memory limit for GOMEMLIMIT to follow", overlay, w)
			}
		}
	}
}
