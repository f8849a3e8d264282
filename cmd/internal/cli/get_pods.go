package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bytesize"
)

func init() {
	registerResource(&resource{
		names:      []string{"pods", "pod", "po"},
		kind:       "Pod",
		bucket:     events.BucketPods,
		namespaced: true,
		header:     []string{"NAME", "READY", "PHASE", "RESTARTS", "HOST", "IP", "AGE", "REASON"},
		wideHeader: []string{"CLUSTER", "VM", "CPU", "MEMORY", "NETWORKS", "UID"},
		wide: func(r record) []string {
			p := &r.(*podRow).PodRecord
			return []string{dash(p.Cluster), dash(podVM(p)), fmt.Sprintf("%dm", p.Size.CPUMilli), bytesize.Short(p.Size.MemoryBytes), dash(strings.Join(p.Networks, ",")), p.UID}
		},
		decode: decodeRow[podRow],
	})
}

type podRow struct{ events.PodRecord }

// podVM is the name of the pod's VM once its create began: the record
// names the VM from admission on (the name it will be created under), but
// a pod that was never placed, or failed before, has none to show.
func podVM(r *events.PodRecord) string {
	if r.VMRef == "" && r.CreateTask == "" {
		return ""
	}
	return r.VMName
}

func (p *podRow) Namespace() string         { return p.PodRecord.Namespace }
func (p *podRow) Name() string              { return p.PodRecord.Name }
func (p *podRow) Labels() map[string]string { return p.Pod.Labels }

// Object is the Kubernetes shape: metadata, spec.nodeName, status.
func (p *podRow) Object() any {
	pod := p.KubernetesPod()
	return &pod
}

// Row shows, like kubectl, how many app containers are ready and how often
// the containers, init containers included, restarted, as the guest
// reported; PHASE is podvisor's own (Starting: the VM is on, the containers
// are not all started yet).
func (p *podRow) Row(now time.Time) []string {
	r := &p.PodRecord
	ready, restarts := 0, int32(0)
	for _, cs := range r.InitContainerStatuses {
		restarts += cs.RestartCount
	}
	for _, cs := range r.ContainerStatuses {
		if cs.Ready {
			ready++
		}
		restarts += cs.RestartCount
	}
	return []string{r.Name, fmt.Sprintf("%d/%d", ready, len(r.Pod.Spec.Containers)), dash(r.Phase), strconv.Itoa(int(restarts)),
		dash(r.Host), dash(r.IP), age(r.CreatedAt, now), dash(podReason(r))}
}

// podReason is, as kubectl's STATUS shows it, where a pod's init
// containers stand while they have not all completed (Init:1/2,
// Init:CrashLoopBackOff, Init:Error), or else the pod's reason, or else
// the reason of a container that does not run: waiting (CrashLoopBackOff,
// CreateContainerError…), or terminated while the pod goes on (Error,
// OOMKilled; not Completed, which is no trouble). The last container's
// comes first, as in kubectl.
func podReason(r *events.PodRecord) string {
	if init := initReason(r); init != "" {
		return init
	}
	if r.Reason != "" {
		return r.Reason
	}
	for i := len(r.ContainerStatuses) - 1; i >= 0; i-- {
		st := r.ContainerStatuses[i].State
		switch {
		case st.Waiting != nil && st.Waiting.Reason != "" && st.Waiting.Reason != events.ReasonContainerCreating:
			return st.Waiting.Reason
		case st.Terminated != nil && st.Terminated.Reason != "" && st.Terminated.Reason != "Completed" && r.Phase == events.PodPhaseRunning:
			return st.Terminated.Reason
		}
	}
	return ""
}

// initReason is kubectl's STATUS for a pod whose init containers have not
// all completed: the first one that has not says why (its terminated or
// waiting reason, or its exit code or signal when it gives none), or else
// how many completed before it. Empty once every init container completed
// or before the guest reported any.
func initReason(r *events.PodRecord) string {
	for i, cs := range r.InitContainerStatuses {
		switch t, w := cs.State.Terminated, cs.State.Waiting; {
		case t != nil && t.ExitCode == 0:
			continue
		case t != nil && t.Reason != "":
			return "Init:" + t.Reason
		case t != nil && t.Signal != 0:
			return fmt.Sprintf("Init:Signal:%d", t.Signal)
		case t != nil:
			return fmt.Sprintf("Init:ExitCode:%d", t.ExitCode)
		case w != nil && w.Reason != "" && w.Reason != events.ReasonContainerCreating && w.Reason != "PodInitializing":
			return "Init:" + w.Reason
		default:
			return fmt.Sprintf("Init:%d/%d", i, len(r.Pod.Spec.InitContainers))
		}
	}
	return ""
}
