package events

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestValidateAffinity(t *testing.T) {
	anti := func(key string) *corev1.Affinity {
		return &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				TopologyKey:   key,
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			}},
		}}
	}
	tests := []struct {
		name     string
		affinity *corev1.Affinity
		wantErr  string // "" = valid
	}{
		{"required anti-affinity per host", anti(TopologyKeyHostname), ""},
		{"podvisor host key", anti(TopologyKeyHost), ""},
		{"zone topology refused", anti("topology.kubernetes.io/zone"), "podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey"},
		{"pod affinity refused", &corev1.Affinity{PodAffinity: &corev1.PodAffinity{}},
			"affinity.podAffinity: Forbidden: not supported by podvisor: only requiredDuringSchedulingIgnoredDuringExecution podAntiAffinity per host is supported"},
		{"preferred anti-affinity refused", &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: 1}},
		}}, "podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution: Forbidden: not supported by podvisor: only requiredDuringSchedulingIgnoredDuringExecution pod anti-affinity is supported"},
		// The whole sentence, so that a refusal never reads as cut off.
		{"preferred node affinity refused", &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{Weight: 1}},
		}}, "nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution: Forbidden: not supported by podvisor: only requiredDuringSchedulingIgnoredDuringExecution node affinity is supported"},
		{"required node affinity on host labels", &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "podvisor.io/cluster", Operator: corev1.NodeSelectorOpIn, Values: []string{"cluster-1"}}},
			}}},
		}}, ""},
		{"node affinity on fields refused", &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"x"}}},
			}}},
		}}, "nodeSelectorTerms[0].matchFields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "a", Image: "registry.local/a:1"}},
					Affinity:   tt.affinity,
				},
			}
			err := ValidatePod(pod)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("ValidatePod: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("ValidatePod err = %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}
