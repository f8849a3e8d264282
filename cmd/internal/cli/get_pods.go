package cli

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:      []string{"pods", "pod", "po"},
		bucket:     events.BucketPods,
		namespaced: true,
		header:     []string{"NAME", "READY", "PHASE", "RESTARTS", "HOST", "IP", "AGE", "REASON"},
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

// Row shows, like kubectl, how many containers are ready and how often they
// restarted, as the guest reported; PHASE is podvisor's own (Starting: the
// VM is on, the containers are not all started yet).
func (p *podRow) Row(now time.Time) []string {
	r := &p.PodRecord
	ready, restarts := 0, int32(0)
	for _, cs := range r.ContainerStatuses {
		if cs.Ready {
			ready++
		}
		restarts += cs.RestartCount
	}
	return []string{r.Name, fmt.Sprintf("%d/%d", ready, len(r.Pod.Spec.Containers)), dash(r.Phase), strconv.Itoa(int(restarts)),
		dash(r.Host), dash(r.IP), age(r.CreatedAt, now), dash(r.Reason)}
}
