package cli

import (
	"encoding/json"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:      []string{"pods", "pod", "po"},
		bucket:     events.BucketPods,
		namespaced: true,
		header:     []string{"NAME", "PHASE", "HOST", "IP", "AGE", "REASON"},
		decode: func(v []byte) (record, error) {
			var r podRow
			return &r, json.Unmarshal(v, &r.PodRecord)
		},
	})
}

type podRow struct{ events.PodRecord }

func (p *podRow) Namespace() string { return p.PodRecord.Namespace }
func (p *podRow) Name() string      { return p.PodRecord.Name }

// Object is the Kubernetes shape: metadata, spec.nodeName, status.
func (p *podRow) Object() any {
	pod := p.KubernetesPod()
	return &pod
}

func (p *podRow) Row(now time.Time) []string {
	r := &p.PodRecord
	return []string{r.Name, dash(r.Phase), dash(r.Host), dash(r.IP), age(r.CreatedAt, now), dash(r.Reason)}
}
