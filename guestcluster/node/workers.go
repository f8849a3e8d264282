package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Workers keeps the guest cluster's worker nodes what the supervisor says
// they are (node.list): one node per worker VM of spec.workers, Ready while
// that VM runs. A worker the supervisor no longer lists (scaled down) has
// its pods deleted, on the supervisor and in the guest cluster, and its
// Node object removed.
//
// Where the worker nodes' virtual-kubelets run is the Workers' mode: all
// here (the zero value: the control plane runs them, beside the podvisor
// node); Remote, in the control plane of a cluster whose worker VMs run
// their own nodes: none runs here, but a listed node whose VM does not run
// is marked NotReady here (its kubelet went with its VM, and no node
// lifecycle controller runs in the guest cluster) and unlisted ones are
// removed; Only, in the worker VM named so: that one node runs here and
// nothing is removed.
type Workers struct {
	Client     kubernetes.Interface
	Host       string
	KubeletTLS *tls.Config
	Supervisor *Supervisor
	Version    string
	// Remote: the worker nodes run in their VMs (see above).
	Remote bool
	// Only, when set, is the one worker node run here, with its kubelet
	// API on Port (0: a free one).
	Only string
	Port int
	// PollInterval is how often the list is read (default 2s); the pods'
	// statuses are polled at the nodes' own interval.
	PollInterval time.Duration
	Logger       *slog.Logger

	running map[string]*worker
	// renewals is the last renewal seen of each remote worker node's
	// Lease, and when this process saw it change (staleRemote).
	renewals map[string]renewal
}

// renewal is a node Lease's renew time as last read, and when this
// process saw it change: staleness is measured on this process's clock,
// as the node lifecycle controller does, so a worker VM's clock does not
// decide it.
type renewal struct {
	renewTime time.Time
	seen      time.Time
}

type worker struct {
	node   *Node
	state  chan events.GuestNode // the latest state, for the node's goroutine
	last   events.GuestNode
	cancel context.CancelFunc
	done   chan struct{}
}

// Run keeps the worker nodes until ctx ends.
func (w *Workers) Run(ctx context.Context) {
	every := w.PollInterval
	if every <= 0 {
		every = 2 * time.Second
	}
	w.running = map[string]*worker{}
	w.renewals = map[string]renewal{}
	defer func() {
		for _, r := range w.running {
			r.cancel()
			<-r.done
		}
	}()
	periodic.EveryAfter(ctx, 0, every, w.Logger, "worker nodes", w.sync)
}

func (w *Workers) sync(ctx context.Context) error {
	list, err := w.Supervisor.ListNodes(ctx)
	if err != nil {
		return err
	}
	want := map[string]events.GuestNode{}
	for _, n := range list {
		if w.Only == "" || n.Name == w.Only {
			want[n.Name] = n
		}
	}
	if w.Remote {
		for _, n := range want {
			if err := w.markNotReady(ctx, n); err != nil {
				return err
			}
			if err := w.markUnknownIfSilent(ctx, n, time.Now()); err != nil {
				return err
			}
		}
		return w.removeGone(ctx, want)
	}
	for name, r := range w.running {
		select {
		case <-r.done: // stopped on an error: started again below
			delete(w.running, name)
		default:
		}
	}
	for name, n := range want {
		r := w.running[name]
		if r == nil {
			if r, err = w.start(ctx, n); err != nil {
				w.Logger.Warn("start worker node", "node", name, "err", err)
				continue
			}
			w.running[name] = r
		}
		if !reflect.DeepEqual(r.last, n) {
			r.last = n
			select { // keep only the latest state
			case <-r.state:
			default:
			}
			r.state <- n
		}
	}
	if w.Only != "" {
		// A worker VM's node leaves the removal to the control plane.
		return nil
	}
	return w.removeGone(ctx, want)
}

// removeGone removes the worker nodes no longer listed, with their pods;
// so go those left from before a restart of the control plane.
func (w *Workers) removeGone(ctx context.Context, want map[string]events.GuestNode) error {
	nodes, err := w.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: LabelWorker})
	if err != nil {
		return err
	}
	gone := map[string]bool{}
	for name := range w.running {
		if _, ok := want[name]; !ok {
			gone[name] = true
		}
	}
	for _, n := range nodes.Items {
		if _, ok := want[n.Name]; !ok {
			gone[n.Name] = true
		}
	}
	for name := range gone {
		if err := w.remove(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// start runs a worker node; its goroutine sends each state it is given.
func (w *Workers) start(ctx context.Context, n events.GuestNode) (*worker, error) {
	node, err := New(Config{Name: n.Name, Worker: &n, Client: w.Client, Host: w.Host, Port: w.Port, KubeletTLS: w.KubeletTLS,
		Supervisor: w.Supervisor, Version: w.Version, Logger: w.Logger})
	if err != nil {
		return nil, err
	}
	nctx, cancel := context.WithCancel(ctx)
	r := &worker{node: node, state: make(chan events.GuestNode, 1), cancel: cancel, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(r.done)
		if err := node.Run(nctx, ready); err != nil && nctx.Err() == nil {
			w.Logger.Warn("worker node stopped", "node", n.Name, "err", err)
		}
	}()
	go func() {
		select {
		case <-ready:
		case <-r.done:
			return
		}
		for {
			select {
			case <-nctx.Done():
				return
			case s := <-r.state:
				if err := node.SetWorker(nctx, s); err != nil && nctx.Err() == nil {
					w.Logger.Warn("worker node status", "node", n.Name, "err", err)
				}
			}
		}
	}()
	w.Logger.Info("worker node started", "node", n.Name, "ready", n.Ready)
	return r, nil
}

// remove stops a worker node, deletes its pods (on the supervisor, then in
// the guest cluster: no controller manager here collects a gone node's
// pods) and its Node object.
func (w *Workers) remove(ctx context.Context, name string) error {
	if r := w.running[name]; r != nil {
		r.cancel()
		<-r.done
		delete(w.running, name)
	}
	pods, err := w.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", name).String()})
	if err != nil {
		return fmt.Errorf("pods of worker node %s: %w", name, err)
	}
	for _, p := range pods.Items {
		if err := w.Supervisor.DeletePod(ctx, p.Namespace, p.Name); err != nil {
			return fmt.Errorf("delete pod %s/%s of worker node %s: %w", p.Namespace, p.Name, name, err)
		}
		zero := int64(0)
		if err := w.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	err = w.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete worker node %s: %w", name, err)
	}
	if err == nil {
		w.Logger.Info("worker node removed", "node", name, "pods", len(pods.Items))
	}
	return nil
}

// markNotReady sets the Ready condition of n's Node to False when the
// supervisor says its VM does not run (and the Node says otherwise): the
// node's own virtual-kubelet, in that VM, cannot.
func (w *Workers) markNotReady(ctx context.Context, n events.GuestNode) error {
	if n.Ready {
		return nil
	}
	cur, err := w.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil // registered by its VM once it runs
	}
	if err != nil {
		return err
	}
	for _, c := range cur.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionFalse && c.Message == n.Message {
			return nil
		}
	}
	next := cur.DeepCopy()
	setReady(next, n)
	if !slices.ContainsFunc(next.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == corev1.NodeReady }) {
		now := metav1.Now()
		next.Status.Conditions = append(next.Status.Conditions, corev1.NodeCondition{Type: corev1.NodeReady,
			Status: corev1.ConditionFalse, Reason: "WorkerVMNotRunning", Message: n.Message, LastHeartbeatTime: now, LastTransitionTime: now})
	}
	if _, err := w.Client.CoreV1().Nodes().UpdateStatus(ctx, next, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("mark worker node %s NotReady: %w", n.Name, err)
	}
	w.Logger.Info("worker node NotReady: its VM does not run", "node", n.Name, "why", n.Message)
	return nil
}

// Reasons of a silent worker node's Ready condition, as the node lifecycle
// controller sets them.
const (
	ReasonNodeStatusUnknown  = "NodeStatusUnknown"
	MessageNodeStatusUnknown = "Kubelet stopped posting node status."
)

// markUnknownIfSilent sets the Ready condition of n's Node to Unknown when
// its VM runs but its node (the virtual-kubelet in that VM) has not
// renewed its Lease in kube-node-lease for the Lease's duration (40 s):
// the process hangs or cannot reach the API server, so nothing it said
// about its pods can be trusted any more. The guest cluster runs no
// kube-controller-manager, whose node lifecycle controller would do this.
// The node's next status update (its virtual-kubelet posts one at least
// every minute) makes it Ready again.
func (w *Workers) markUnknownIfSilent(ctx context.Context, n events.GuestNode, now time.Time) error {
	if !n.Ready {
		delete(w.renewals, n.Name)
		return nil // markNotReady says why
	}
	lease, err := w.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil // registered by its VM once it runs
	}
	if err != nil {
		return fmt.Errorf("lease of worker node %s: %w", n.Name, err)
	}
	var renewed time.Time
	if lease.Spec.RenewTime != nil {
		renewed = lease.Spec.RenewTime.Time
	}
	last, ok := w.renewals[n.Name]
	if !ok || !last.renewTime.Equal(renewed) {
		w.renewals[n.Name] = renewal{renewTime: renewed, seen: now}
		return nil
	}
	grace := 40 * time.Second
	if d := lease.Spec.LeaseDurationSeconds; d != nil && *d > 0 {
		grace = time.Duration(*d) * time.Second
	}
	if now.Sub(last.seen) < grace {
		return nil
	}
	cur, err := w.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	next := cur.DeepCopy()
	changed := false
	for i, c := range next.Status.Conditions {
		if c.Type != corev1.NodeReady || c.Status == corev1.ConditionUnknown {
			continue
		}
		c.Status, c.Reason, c.Message = corev1.ConditionUnknown, ReasonNodeStatusUnknown, MessageNodeStatusUnknown
		c.LastTransitionTime = metav1.NewTime(now)
		next.Status.Conditions[i], changed = c, true
	}
	if !changed {
		return nil
	}
	if _, err := w.Client.CoreV1().Nodes().UpdateStatus(ctx, next, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("mark worker node %s Unknown: %w", n.Name, err)
	}
	w.Logger.Info("worker node Unknown: its Lease was not renewed", "node", n.Name, "renewed", renewed, "silent", now.Sub(last.seen).Round(time.Second))
	return nil
}
