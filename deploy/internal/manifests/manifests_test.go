package manifests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

const validDeployment = `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
          readinessProbe:
            httpGet: {path: /, port: 80}
`

func TestDecodeOneIsStrict(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		wantErr string // empty: must decode
	}{
		{name: "valid deployment", doc: validDeployment},
		{
			name:    "misspelled container field",
			doc:     strings.Replace(validDeployment, "readinessProbe:", "readinesProbe:", 1),
			wantErr: `unknown field "spec.template.spec.containers[0].readinesProbe"`,
		},
		{
			name:    "field one level too deep",
			doc:     strings.Replace(validDeployment, "      containers:", "      replicas: 2\n      containers:", 1),
			wantErr: `unknown field "spec.template.spec.replicas"`,
		},
		{
			name:    "field given twice",
			doc:     strings.Replace(validDeployment, "  name: web\n", "  name: web\n  name: web2\n", 1),
			wantErr: `key "name" already set in map`,
		},
		{
			name:    "unknown kind",
			doc:     "apiVersion: apps/v1\nkind: Deploymint\nmetadata: {name: web}\n",
			wantErr: `Deploymint/web: no kind "Deploymint"`,
		},
		{
			name:    "wrong type",
			doc:     strings.Replace(validDeployment, "spec:\n  selector:", "spec:\n  replicas: two\n  selector:", 1),
			wantErr: "Deployment/web",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj, err := DecodeOne([]byte(tt.doc))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("DecodeOne: %v", err)
				}
				d, ok := obj.Object.(*appsv1.Deployment)
				if !ok {
					t.Fatalf("decoded %T, want *appsv1.Deployment", obj.Object)
				}
				if got := d.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Path; got != "/" {
					t.Errorf("readiness path = %q, want /", got)
				}
				if obj.String() != "Deployment/web" {
					t.Errorf("String() = %q", obj.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeOne accepted a broken manifest:\n%s", tt.doc)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeStream(t *testing.T) {
	stream := "# header comment only\n---\n" + validDeployment + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80}]\n---\n"
	objs, err := Decode([]byte(stream))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if len(objs) != 2 {
		t.Fatalf("decoded %d objects, want 2 (the comment-only document is skipped)", len(objs))
	}
	if _, ok := objs[1].Object.(*corev1.Service); !ok || objs[1].String() != "Service/shop/web" {
		t.Errorf("second object = %T %s, want Service/shop/web", objs[1].Object, objs[1])
	}

	broken := stream + strings.Replace(validDeployment, "image:", "imagee:", 1)
	if _, err := Decode([]byte(broken)); err == nil || !strings.Contains(err.Error(), "document 3") {
		t.Errorf("Decode of a stream with a broken third document: err = %v, want one naming document 3", err)
	}
}

func TestBuildDecodesTheKustomization(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("kustomization.yaml", "namespace: shop\nresources: [web.yaml]\nimages: [{name: nginx, newTag: '1.28'}]\n")
	write("web.yaml", validDeployment)
	objs, err := Build(dir)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if len(objs) != 1 {
		t.Fatalf("Build returned %d objects, want 1", len(objs))
	}
	d := objs[0].Object.(*appsv1.Deployment)
	if d.Namespace != "shop" || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.28" {
		t.Errorf("kustomize transformations not applied: namespace %q image %q", d.Namespace, d.Spec.Template.Spec.Containers[0].Image)
	}

	write("web.yaml", strings.Replace(validDeployment, "image:", "imagee:", 1))
	if _, err := Build(dir); err == nil || !strings.Contains(err.Error(), "imagee") {
		t.Errorf("Build of a kustomization with an unknown field: err = %v, want one naming imagee", err)
	}
}
