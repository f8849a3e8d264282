package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Provider runs the pods of the podvisor node as supervisor pods.
type Provider struct {
	// node is the node's name (NodeName unless a worker node).
	node         string
	sup          *Supervisor
	log          *slog.Logger
	pollInterval time.Duration

	mu     sync.Mutex
	pods   map[string]*corev1.Pod // guest namespace/name → the pod with its last status
	notify func(*corev1.Pod)
	// logs streams a logs request's answer to w: sup.Logs, unless a test
	// stands in for the supervisor.
	logs func(ctx context.Context, req events.PodLogsRequest, w io.Writer) error
}

var _ nodeutil.Provider = (*Provider)(nil)

// NewProvider makes the provider; Run keeps statuses flowing.
func NewProvider(sup *Supervisor, pollInterval time.Duration, log *slog.Logger) *Provider {
	if pollInterval <= 0 {
		pollInterval = time.Second
	}
	return &Provider{node: NodeName, sup: sup, log: log, pollInterval: pollInterval, pods: map[string]*corev1.Pod{}, notify: func(*corev1.Pod) {}}
}

func key(ns, name string) string { return ns + "/" + name }

// CreatePod asks the supervisor for the pod.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	r, err := p.sup.CreatePod(ctx, pod)
	if err != nil {
		return err
	}
	pod = pod.DeepCopy()
	now := metav1.Now()
	pod.Status = corev1.PodStatus{Phase: corev1.PodPending, StartTime: &now,
		Message: fmt.Sprintf("pod VM %s/%s requested from the supervisor", r.Namespace, r.Name)}
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	p.mu.Unlock()
	p.log.Info("pod requested", "pod", key(pod.Namespace, pod.Name), "supervisor_pod", r.Namespace+"/"+r.Name)
	return nil
}

// UpdatePod keeps the new object: pods are immutable on the supervisor
// (what may change, labels and annotations, stays in the guest cluster).
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.pods[key(pod.Namespace, pod.Name)]; ok {
		st := old.Status
		old = pod.DeepCopy()
		old.Status = st
		p.pods[key(pod.Namespace, pod.Name)] = old
	}
	return nil
}

// DeletePod asks the supervisor to delete the pod; the poll loop reports
// it terminated once its supervisor pod is gone.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	tracked := p.pods[key(pod.Namespace, pod.Name)]
	if tracked != nil {
		now := metav1.Now()
		tracked.DeletionTimestamp = &now
	}
	p.mu.Unlock()
	if err := p.sup.DeletePod(ctx, pod.Namespace, pod.Name); err != nil {
		return err
	}
	if tracked == nil {
		return errdefs.NotFoundf("pod %s is not known to the podvisor node", key(pod.Namespace, pod.Name))
	}
	return nil
}

// GetPod returns the pod as last seen.
func (p *Provider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.pods[key(namespace, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s is not known to the podvisor node", key(namespace, name))
	}
	return pod.DeepCopy(), nil
}

// GetPodStatus returns the pod's status as last seen.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod of the node.
func (p *Provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, pod := range p.pods {
		out = append(out, pod.DeepCopy())
	}
	return out, nil
}

// NotifyPods registers virtual-kubelet's status callback.
func (p *Provider) NotifyPods(ctx context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.mu.Unlock()
}

// Run polls the supervisor for the pods' statuses until ctx ends.
func (p *Provider) Run(ctx context.Context) {
	periodic.Every(ctx, p.pollInterval, p.log, "pod statuses from the supervisor", p.sync)
}

// sync copies the supervisor pods' statuses onto the guest pods and
// reports the deleted ones terminated.
func (p *Provider) sync(ctx context.Context) error {
	sup, err := p.sup.ListPods(ctx)
	if err != nil {
		return err
	}
	byGuest := map[string]*corev1.Pod{}
	for i := range sup {
		l := sup[i].Labels
		byGuest[key(l[events.LabelGuestNamespace], l[events.LabelGuestName])] = &sup[i]
	}
	var changed []*corev1.Pod
	p.mu.Lock()
	for k, pod := range p.pods {
		sp, ok := byGuest[k]
		switch {
		case !ok && pod.DeletionTimestamp != nil:
			pod = pod.DeepCopy()
			terminate(pod)
			delete(p.pods, k)
			changed = append(changed, pod)
		case ok:
			st := guestStatus(pod, sp)
			if !equality.Semantic.DeepEqual(st, pod.Status) {
				pod.Status = st
				changed = append(changed, pod.DeepCopy())
			}
		}
	}
	notify := p.notify
	p.mu.Unlock()
	for _, pod := range changed {
		notify(pod)
	}
	return nil
}

// guestStatus is the supervisor pod's status as the guest pod's.
func guestStatus(guest, sup *corev1.Pod) corev1.PodStatus {
	st := *sup.Status.DeepCopy()
	if st.StartTime == nil {
		st.StartTime = guest.Status.StartTime
	}
	// The guest cluster's node is `podvisor`, on the loopback address;
	// the supervisor's host names mean nothing there.
	st.HostIP, st.HostIPs = "", nil
	st.NominatedNodeName = ""
	return st
}

// terminate marks every container of a deleted pod terminated, which lets
// virtual-kubelet remove it from the guest cluster.
func terminate(pod *corev1.Pod) {
	now := metav1.Now()
	pod.Status.Phase = corev1.PodSucceeded
	pod.Status.Reason = "PodVMDeleted"
	pod.Status.Message = "the pod VM was deleted"
	for i := range pod.Status.ContainerStatuses {
		cs := &pod.Status.ContainerStatuses[i]
		if cs.State.Terminated == nil {
			cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "PodVMDeleted", FinishedAt: now}}
		}
		cs.Ready = false
	}
}

// GetContainerLogs streams the container's log from the pod's host agent,
// with the kubelet API's options: tail (0 from the end only when the
// query said tailLines=0, see withTailZero), timestamps, since (seconds
// back from now, or a time) and a limit of bytes.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	req := events.PodLogsRequest{Namespace: namespace, Name: podName, Container: containerName,
		Follow: opts.Follow, Previous: opts.Previous, TailLines: int64(opts.Tail),
		FromEnd: opts.Tail == 0 && ctx.Value(tailZeroKey{}) != nil, Timestamps: opts.Timestamps, LimitBytes: int64(opts.LimitBytes)}
	switch {
	case !opts.SinceTime.IsZero():
		req.SinceTime = &opts.SinceTime
	case opts.SinceSeconds > 0:
		// The kubelet counts back from its own clock; the node's is the
		// nearest there is to the pod VM's, whose lines' times are
		// compared.
		since := time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
		req.SinceTime = &since
	}
	if err := req.Validate(); err != nil {
		return nil, errdefs.AsInvalidInput(err)
	}
	logs := p.logs
	if logs == nil {
		logs = p.sup.Logs
	}
	r, w := io.Pipe()
	go func() { w.CloseWithError(logs(ctx, req, w)) }()
	return r, nil
}

// tailZeroKey marks the context of a logs request whose query asked for
// tailLines=0.
type tailZeroKey struct{}

// withTailZero passes on to GetContainerLogs that a logs request asked for
// no lines before the end (`kubectl logs --tail 0`: tailLines=0), which
// virtual-kubelet's ContainerLogOpts cannot say: its Tail is 0 for that
// and for no tail at all (the whole log).
func withTailZero(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query(); strings.HasPrefix(r.URL.Path, "/containerLogs/") && q.Has("tailLines") {
			if n, err := strconv.Atoi(q.Get("tailLines")); err == nil && n == 0 {
				r = r.WithContext(context.WithValue(r.Context(), tailZeroKey{}, true))
			}
		}
		h.ServeHTTP(w, r)
	})
}

// RunInContainer runs a command in the container (no terminal).
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	if attach.TTY() {
		return errdefs.InvalidInput("exec with a terminal is not supported by the podvisor node")
	}
	stdout, stderr := attach.Stdout(), attach.Stderr()
	if stdout == nil {
		stdout = nopWriteCloser{io.Discard}
	}
	if stderr == nil {
		stderr = nopWriteCloser{io.Discard}
	}
	defer stdout.Close()
	defer stderr.Close()
	req := events.PodExecRequest{Namespace: namespace, Name: podName, Container: containerName, Command: cmd, Stdin: attach.Stdin() != nil}
	code, err := p.sup.Exec(ctx, req, attach.Stdin(), stdout, stderr)
	if err != nil {
		return err
	}
	if code != nil && *code != 0 {
		return exitError{code: int(*code)}
	}
	return nil
}

// exitError carries a command's exit code to the kubelet API, which tells
// kubectl (ExitCode is what the kubelet's exec streaming looks for).
type exitError struct{ code int }

func (e exitError) Error() string   { return fmt.Sprintf("command terminated with exit code %d", e.code) }
func (e exitError) String() string  { return e.Error() }
func (e exitError) Exited() bool    { return true }
func (e exitError) ExitStatus() int { return e.code }

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// AttachToContainer is not supported: a pod VM's containers have no
// attachable terminal.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by the podvisor node")
}

// GetStatsSummary reports the node with no usage figures (none are
// collected from pod VMs yet).
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.node}}, nil
}

// GetMetricsResource reports no metrics.
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

// PortForward is not supported.
func (p *Provider) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	return errdefs.InvalidInput("port-forward is not supported by the podvisor node")
}
