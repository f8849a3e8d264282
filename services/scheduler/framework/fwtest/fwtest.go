// Package fwtest has fixture builders for framework and plugin tests, in
// the style of kube-scheduler's st.MakeNode()/st.MakePod(): a test states
// only what matters to it and the builder fills sensible defaults (a
// connected 32-core / 256 GiB host carrying the "default" network; a
// 1-CPU / 1 GiB pod on "default").
package fwtest

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// GiB is 1<<30 bytes.
const GiB int64 = 1 << 30

// HostBuilder builds a framework.Host.
type HostBuilder struct{ h framework.Host }

// MakeHost starts a host named name in cluster-1.
func MakeHost(name string) *HostBuilder {
	return &HostBuilder{h: framework.Host{
		Name: name, Cluster: "cluster-1", ConnectionState: "connected",
		CPUCapacityMilli: 32000, MemoryCapacityBytes: 256 * GiB,
		Datastores: []string{"shared-ds"},
		Labels:     map[string]string{framework.LabelHost: name, framework.LabelCluster: "cluster-1"},
		Networks:   map[string]framework.NetworkState{"default": framework.NetworkRealized},
	}}
}

// Cluster sets the cluster (and its label).
func (b *HostBuilder) Cluster(c string) *HostBuilder {
	b.h.Cluster = c
	b.h.Labels[framework.LabelCluster] = c
	return b
}

// Capacity sets CPU (millicores) and memory.
func (b *HostBuilder) Capacity(cpuMilli, memBytes int64) *HostBuilder {
	b.h.CPUCapacityMilli, b.h.MemoryCapacityBytes = cpuMilli, memBytes
	return b
}

// MaxPods caps the pods.
func (b *HostBuilder) MaxPods(n int) *HostBuilder { b.h.MaxPods = n; return b }

// State sets the connection state.
func (b *HostBuilder) State(s string) *HostBuilder { b.h.ConnectionState = s; return b }

// Maintenance puts the host in maintenance mode.
func (b *HostBuilder) Maintenance() *HostBuilder { b.h.Maintenance = true; return b }

// Cordoned cordons the host.
func (b *HostBuilder) Cordoned() *HostBuilder { b.h.Cordoned = true; return b }

// Label adds a host label.
func (b *HostBuilder) Label(k, v string) *HostBuilder { b.h.Labels[k] = v; return b }

// Network sets a network's state on the host.
func (b *HostBuilder) Network(n string, s framework.NetworkState) *HostBuilder {
	if s == framework.NetworkAbsent {
		delete(b.h.Networks, n)
	} else {
		b.h.Networks[n] = s
	}
	return b
}

// Datastores replaces the datastores.
func (b *HostBuilder) Datastores(ds ...string) *HostBuilder { b.h.Datastores = ds; return b }

// Pod places a pod reference on the host.
func (b *HostBuilder) Pod(p *framework.PodRef) *HostBuilder { b.h.AddPod(p); return b }

// Used places an anonymous pod using cpu and memory.
func (b *HostBuilder) Used(cpuMilli, memBytes int64) *HostBuilder {
	n := len(b.h.Pods)
	b.h.AddPod(&framework.PodRef{Key: fmt.Sprintf("used-%d", n), UID: fmt.Sprintf("used-%d", n),
		Namespace: "other", Name: fmt.Sprintf("used-%d", n), CPUMilli: cpuMilli, MemoryBytes: memBytes})
	return b
}

// Obj returns the host.
func (b *HostBuilder) Obj() *framework.Host { h := b.h; return &h }

// PodBuilder builds a framework.PodInfo through a corev1.Pod, so that the
// compile step (framework.NewPodInfo) is exercised too.
type PodBuilder struct {
	pod        corev1.Pod
	size       framework.PodSize
	networks   []string
	exclude    []string
	datastores []string
	vm         bool
}

// MakePod starts a pod default/name of 1 CPU and 1 GiB on "default".
func MakePod(name string) *PodBuilder {
	return &PodBuilder{
		pod: corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "podvisor/base:1.0"}}},
		},
		size:     framework.PodSize{CPUMilli: 1000, MemoryBytes: GiB},
		networks: []string{"default"},
	}
}

// VM makes it a native VM placed like a pod (framework.PodInfo.VM).
func (b *PodBuilder) VM() *PodBuilder { b.vm = true; return b }

// Namespace sets the namespace.
func (b *PodBuilder) Namespace(ns string) *PodBuilder { b.pod.Namespace = ns; return b }

// Size sets the pod VM size.
func (b *PodBuilder) Size(cpuMilli, memBytes int64) *PodBuilder {
	b.size = framework.PodSize{CPUMilli: cpuMilli, MemoryBytes: memBytes}
	return b
}

// Networks sets the pod's networks.
func (b *PodBuilder) Networks(n ...string) *PodBuilder { b.networks = n; return b }

// Label adds a pod label.
func (b *PodBuilder) Label(k, v string) *PodBuilder { b.pod.Labels[k] = v; return b }

// Images sets one container per image.
func (b *PodBuilder) Images(imgs ...string) *PodBuilder {
	b.pod.Spec.Containers = nil
	for i, img := range imgs {
		b.pod.Spec.Containers = append(b.pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: img})
	}
	return b
}

// NodeSelector adds a nodeSelector entry.
func (b *PodBuilder) NodeSelector(k, v string) *PodBuilder {
	if b.pod.Spec.NodeSelector == nil {
		b.pod.Spec.NodeSelector = map[string]string{}
	}
	b.pod.Spec.NodeSelector[k] = v
	return b
}

// HostAffinityIn adds a required node-affinity term key In values.
func (b *PodBuilder) HostAffinityIn(key string, values ...string) *PodBuilder {
	a := b.affinity()
	if a.NodeAffinity == nil {
		a.NodeAffinity = &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{}}
	}
	ns := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	ns.NodeSelectorTerms = append(ns.NodeSelectorTerms, corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
		{Key: key, Operator: corev1.NodeSelectorOpIn, Values: values}}})
	return b
}

// AntiAffinity adds a required anti-affinity term matching labels k=v on
// topologyKey.
func (b *PodBuilder) AntiAffinity(k, v, topologyKey string) *PodBuilder {
	a := b.affinity()
	if a.PodAntiAffinity == nil {
		a.PodAntiAffinity = &corev1.PodAntiAffinity{}
	}
	a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution = append(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution,
		corev1.PodAffinityTerm{LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}, TopologyKey: topologyKey})
	return b
}

func (b *PodBuilder) affinity() *corev1.Affinity {
	if b.pod.Spec.Affinity == nil {
		b.pod.Spec.Affinity = &corev1.Affinity{}
	}
	return b.pod.Spec.Affinity
}

// Exclude keeps the pod off hosts.
func (b *PodBuilder) Exclude(hosts ...string) *PodBuilder { b.exclude = hosts; return b }

// Datastores sets the datastores a host must mount (a moving VM's disks').
func (b *PodBuilder) Datastores(ds ...string) *PodBuilder { b.datastores = ds; return b }

// Pod returns the Kubernetes pod.
func (b *PodBuilder) Pod() *corev1.Pod { return &b.pod }

// Info compiles the pod, panicking on error (fixtures are known good; use
// framework.NewPodInfo directly to test errors).
func (b *PodBuilder) Info() *framework.PodInfo {
	p, err := framework.NewPodInfo(&b.pod, "uid-"+b.pod.Name, b.size, b.networks)
	if err != nil {
		panic(err)
	}
	p.Datastores, p.VM = b.datastores, b.vm
	if len(b.exclude) > 0 {
		p.Exclude = map[string]bool{}
		for _, h := range b.exclude {
			p.Exclude[h] = true
		}
	}
	return p
}

// Ref is the pod as it sits on a host.
func (b *PodBuilder) Ref() *framework.PodRef { return framework.PodRefOf(b.Info()) }

// ScoreCase is one row of a score plugin's table test: Pod on Host must
// score Want.
type ScoreCase struct {
	Name string
	Pod  *PodBuilder
	Host *HostBuilder
	Want int64
}

// Scores runs each case as a subtest of t against the plugin's Score.
func Scores(t *testing.T, p framework.ScorePlugin, cases []ScoreCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if got, st := p.Score(context.Background(), nil, c.Pod.Info(), c.Host.Obj()); got != c.Want {
				t.Errorf("score = %d (%v), want %d", got, st, c.Want)
			}
		})
	}
}

// FilterCase is one row of a filter plugin's table test: Pod on Host must
// get WantCode with WantReason (a fit: the zero values, Success and no
// reason).
type FilterCase struct {
	Name       string
	Pod        *PodBuilder
	Host       *HostBuilder
	WantReason string
	WantCode   framework.Code
}

// Filters runs each case as a subtest of t against the plugin's Filter. A
// nil status counts as Success with no reason, as the framework reads it.
func Filters(t *testing.T, p framework.FilterPlugin, cases []FilterCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			st := p.Filter(context.Background(), nil, c.Pod.Info(), c.Host.Obj())
			var reason string
			code := framework.Success
			if st != nil {
				reason, code = st.Reason, st.Code
			}
			if reason != c.WantReason || code != c.WantCode {
				t.Errorf("got %q/%v, want %q/%v", reason, code, c.WantReason, c.WantCode)
			}
		})
	}
}
