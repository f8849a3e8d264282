package events

import (
	"errors"
	"strings"
	"testing"
)

const manifest = `# a pod, a network and a migration
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    podvisor.io/networks: frontend
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    resources:
      requests: {cpu: 500m, memory: 256Mi}
---
---
apiVersion: podvisor.io/v1alpha1
kind: Network
metadata:
  name: frontend
spec:
  vlan: 120
  cidr: 10.20.0.0/24
  gateway: 10.20.0.1
  scope:
    clusters: [cluster-1]
  properties:
    mtu: 9000
---
{"apiVersion": "podvisor.io/v1alpha1", "kind": "Migration", "spec": {"pod": "web", "targetHost": "DC0_C0_H3"}}
`

func TestDecodeObjects(t *testing.T) {
	objs, err := DecodeObjects(strings.NewReader(manifest))
	if err != nil {
		t.Fatalf("DecodeObjects: %v", err)
	}
	if len(objs) != 3 {
		t.Fatalf("got %d objects, want 3 (empty documents skipped)", len(objs))
	}
	pod, net, mig := objs[0], objs[1], objs[2]
	if pod.Kind != KindPod || pod.Pod == nil || pod.Name() != "web" || pod.Document != 1 {
		t.Errorf("object 1 = %+v, want Pod web in document 1", pod)
	}
	if got := SizePodVM(pod.Pod).CPUMilli; got != 750 {
		t.Errorf("pod resources lost in decoding: CPUMilli %d, want 750", got)
	}
	if net.Kind != KindNetwork || net.Network.Spec.VLAN != 120 || net.Network.Spec.Properties.EffectiveMTU() != 9000 || net.Document != 2 {
		t.Errorf("object 2 = %+v, want Network frontend vlan 120 mtu 9000 in document 2", net.Network)
	}
	if !net.Network.Spec.Scope.Includes("any-host", "cluster-1") || net.Network.Spec.Scope.Includes("h", "cluster-2") {
		t.Errorf("scope %+v does not select cluster-1 only", net.Network.Spec.Scope)
	}
	if mig.Kind != KindMigration || mig.Migration.Spec.TargetHost != "DC0_C0_H3" {
		t.Errorf("object 3 = %+v, want Migration of web to DC0_C0_H3", mig.Migration)
	}
	req := mig.Migration.Request("gen-1")
	if req.ID != "gen-1" || req.Namespace != DefaultNamespace || req.Pod != "web" || req.Validate() != nil {
		t.Errorf("Request = %+v (%v)", req, req.Validate())
	}
}

func TestDecodeObjectsErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // substrings of the error
	}{
		{"unknown kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
			[]string{`document 1 (Deployment web): kind: apps/v1 "Deployment" is not supported; want v1 Pod`}},
		{"missing kind", "apiVersion: v1\nmetadata: {name: web}\n", []string{"document 1: kind: Required value"}},
		{"not an object", "- a\n- b\n", []string{"document 1: a document must be an object"}},
		{"typo in pod", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: a\n    imagee: nginx\n",
			[]string{"document 1 (Pod web): spec.containers[0].imagee: Forbidden: unknown field", "spec.containers[0].image: Required value"}},
		{"duplicate key", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nmetadata: {name: web2}\n", []string{"document 1: invalid YAML", "already set"}},
		{"bad quantity", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: a\n    image: nginx\n  - name: b\n    image: nginx\n    resources:\n      requests: {memory: 12Gx}\n",
			[]string{`document 1 (Pod web): spec.containers[1].resources.requests.memory: Invalid value: "12Gx": invalid quantity`}},
		{"every bad document is reported", "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: a, image: nginx}]}\n---\n" +
			"apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: n1}\nspec: {vlan: 5000, cidr: 10.0.0.5/24, gateway: 10.1.0.1}\n---\n" +
			"apiVersion: podvisor.io/v1alpha1\nkind: Migration\nmetadata: {name: m1}\nspec: {namespace: shop}\n",
			[]string{"document 2 (Network n1): spec.vlan: Invalid value: 5000", `spec.cidr: Invalid value: "10.0.0.5/24": has host bits set; did you mean 10.0.0.0/24?`,
				"document 3 (Migration m1): spec.pod: Required value"}},
		{"name not a string", "apiVersion: v1\nkind: Pod\nmetadata: {name: 123}\nspec: {containers: [{name: a, image: nginx}]}\n",
			[]string{"document 1 (Pod): metadata.name: wrong JSON type: got number, want string; quote the value"}},
		{"kind not a string", "apiVersion: v1\nkind: 5\n", []string{"document 1: kind: wrong JSON type: got number, want string"}},
		{"duplicate block mappings", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: a\n    image: nginx\n    image: nginx:2\nmetadata:\n  name: web2\n",
			[]string{"document 1: invalid YAML: spec.containers[0].image: key already set at document line 8, set again at document line 9",
				"metadata: key already set at document line 3, set again at document line 10"}},
		{"wrong type in second container", "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: a, image: nginx}\n  - {name: b, image: nginx, command: sh -c true}\n",
			[]string{"document 1 (Pod web): spec.containers[1].command: wrong JSON type: got string, want []string"}},
		{"annotation parsed as a bool", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {podvisor.io/networks: frontend, podvisor.io/gpu: yes}\nspec: {containers: [{name: a, image: nginx}]}\n",
			[]string{"document 1 (Pod web): metadata.annotations[podvisor.io/gpu]: wrong JSON type: got bool, want string; quote the value (YAML reads unquoted yes"}},
		{"network fields", "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: n1, namespace: x}\nspec: {cidr: 10.0.0.0/24, gateway: 10.0.1.1, properties: {mtu: 100}}\n",
			[]string{"metadata.namespace: Forbidden: unknown field"}},
		{"network gateway and mtu", "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: n1}\nspec: {cidr: 10.0.0.0/24, gateway: 10.0.1.1, properties: {mtu: 100}}\n",
			[]string{"spec.gateway: Invalid value: \"10.0.1.1\": must be inside cidr 10.0.0.0/24", "spec.properties.mtu: Invalid value: 100"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := DecodeObjects(strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("DecodeObjects succeeded with %+v", objs)
			}
			if objs != nil {
				t.Errorf("objects returned with an error: %+v", objs)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			var de *DocumentError
			if !errors.As(err, &de) || de.Document < 1 {
				t.Errorf("error %v carries no *DocumentError", err)
			}
		})
	}
}

func TestDecodeObjectsEmpty(t *testing.T) {
	objs, err := DecodeObjects(strings.NewReader("---\n# nothing\n---\n"))
	if err != nil || len(objs) != 0 {
		t.Errorf("DecodeObjects(empty) = %+v, %v; want nothing", objs, err)
	}
}
