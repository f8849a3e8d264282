package deploy

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/deploy/internal/manifests"
)

// The image every podvisor process runs, as the manifests name it.
const podvisorImage = "ghcr.io/podvisor/podvisor"

// services are the five podvisor services: Deployment names, `serve`
// arguments and app.kubernetes.io/name labels alike.
var services = []string{"scheduler", "provisioner", "imagecache", "netconfig", "migration"}

// repoRoot is the workspace root; the tests run in deploy/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

var (
	builtMu sync.Mutex
	built   = map[string][]manifests.Object{}
)

// build returns the strictly decoded objects of a kustomization under
// deploy/k8s ("overlays/dev", "base/nats", …), built once per test binary.
func build(t *testing.T, dir string) []manifests.Object {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	if objs, ok := built[dir]; ok {
		return objs
	}
	objs, err := manifests.Build(filepath.Join("k8s", dir))
	if err != nil {
		t.Fatalf("build %s: %v", dir, err)
	}
	built[dir] = objs
	return objs
}

// workload is a Deployment or StatefulSet, seen through what the checks need.
type workload struct {
	kind, name string
	replicas   int32
	meta       metav1.ObjectMeta
	template   corev1.PodTemplateSpec
	claims     []corev1.PersistentVolumeClaim // StatefulSet volumeClaimTemplates
	service    string                         // StatefulSet serviceName
}

func (w workload) String() string { return w.kind + "/" + w.name }

func workloads(objs []manifests.Object) []workload {
	var out []workload
	for _, o := range objs {
		switch x := o.Object.(type) {
		case *appsv1.Deployment:
			out = append(out, workload{kind: "Deployment", name: x.Name, replicas: replicas(x.Spec.Replicas), meta: x.ObjectMeta, template: x.Spec.Template})
		case *appsv1.StatefulSet:
			out = append(out, workload{kind: "StatefulSet", name: x.Name, replicas: replicas(x.Spec.Replicas), meta: x.ObjectMeta,
				template: x.Spec.Template, claims: x.Spec.VolumeClaimTemplates, service: x.Spec.ServiceName})
		}
	}
	return out
}

func findWorkload(t *testing.T, objs []manifests.Object, name string) workload {
	t.Helper()
	for _, w := range workloads(objs) {
		if w.name == name {
			return w
		}
	}
	t.Fatalf("no Deployment or StatefulSet named %s", name)
	return workload{}
}

func replicas(p *int32) int32 {
	if p == nil {
		return 1 // the API default
	}
	return *p
}

// objectsOf returns the objects of one Go type.
func objectsOf[T any](objs []manifests.Object) []T {
	var out []T
	for _, o := range objs {
		if x, ok := o.Object.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

func envValue(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// imageRepo strips the tag or digest.
func imageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

func imageTag(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		return image[i:]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return ""
}

// containerPort resolves a named or numbered port of a pod template.
func containerPort(tpl corev1.PodTemplateSpec, name string) (int32, bool) {
	for _, c := range tpl.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return p.ContainerPort, true
			}
		}
	}
	return 0, false
}

func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
