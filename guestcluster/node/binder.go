package node

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// Binder binds every unscheduled pod that asks for the default scheduler
// to a node (a Binding, as kube-scheduler writes): the guest control plane
// has no kube-scheduler.
//
// A pod's nodeSelector and required node affinity are honoured: a pod
// without either goes to Node (the podvisor node); otherwise to Node when
// it matches, else to the matching Ready, schedulable node with the fewest
// pods (the worker nodes, by their labels). A pod no Ready node matches
// stays Pending with condition PodScheduled=False, reason Unschedulable,
// and a message counting why each node was passed over, as kube-scheduler
// says it; it is bound as soon as a node changes so that one fits.
type Binder struct {
	Client kubernetes.Interface
	Node   string
	Logger *slog.Logger
}

// ReasonUnschedulable is the reason of PodScheduled=False for a pod no
// node fits (kube-scheduler's).
const ReasonUnschedulable = corev1.PodReasonUnschedulable

// Run binds pods until ctx ends.
func (b *Binder) Run(ctx context.Context) {
	f := informers.NewSharedInformerFactory(b.Client, time.Minute)
	pods := f.Core().V1().Pods().Informer()
	nodes := f.Core().V1().Nodes().Informer()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer q.ShutDown()
	add := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName == "" {
			if k, err := cache.MetaNamespaceKeyFunc(p); err == nil {
				q.Add(k)
			}
		}
	}
	_, _ = pods.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, o any) { add(o) }})
	// A node that comes, goes, turns Ready or changes its labels may fit a
	// pending pod.
	requeue := func(any) {
		for _, o := range pods.GetStore().List() {
			add(o)
		}
	}
	_, _ = nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: requeue, DeleteFunc: requeue,
		UpdateFunc: func(o, n any) {
			on, nn := o.(*corev1.Node), n.(*corev1.Node)
			if nodeReady(on) != nodeReady(nn) || on.Spec.Unschedulable != nn.Spec.Unschedulable || !maps.Equal(on.Labels, nn.Labels) {
				requeue(n)
			}
		}})
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	go func() { <-ctx.Done(); q.ShutDown() }()
	for {
		k, quit := q.Get()
		if quit {
			return
		}
		if err := b.bind(ctx, pods.GetStore(), nodes.GetStore(), k); err != nil && ctx.Err() == nil {
			b.Logger.Warn("bind", "pod", k, "err", err)
			q.AddRateLimited(k)
		} else {
			q.Forget(k)
		}
		q.Done(k)
	}
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (b *Binder) bind(ctx context.Context, pods, nodes cache.Store, k string) error {
	obj, ok, err := pods.GetByKey(k)
	if err != nil || !ok {
		return err
	}
	pod := obj.(*corev1.Pod)
	if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil ||
		(pod.Spec.SchedulerName != "" && pod.Spec.SchedulerName != corev1.DefaultSchedulerName) {
		return nil
	}
	target, why, err := b.pick(pod, pods, nodes)
	if err != nil {
		return err
	}
	if target == "" {
		return b.unschedulable(ctx, pod, why)
	}
	err = b.Client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: target},
	}, metav1.CreateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil // bound meanwhile, or gone
	}
	if err == nil && target != b.Node {
		b.Logger.Info("pod bound by its node selector", "pod", k, "node", target)
	}
	return err
}

// pick is the node pod goes to, or "" and why no node fits.
func (b *Binder) pick(pod *corev1.Pod, pods, nodes cache.Store) (string, string, error) {
	req := nodeaffinity.GetRequiredNodeAffinity(pod)
	if len(pod.Spec.NodeSelector) == 0 && (pod.Spec.Affinity == nil || pod.Spec.Affinity.NodeAffinity == nil ||
		pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil) {
		return b.Node, "", nil
	}
	var fit []*corev1.Node
	var all, mismatch, notReady, cordoned int
	for _, o := range nodes.List() {
		n := o.(*corev1.Node)
		all++
		match, err := req.Match(n)
		switch {
		case err != nil:
			return "", "", fmt.Errorf("node affinity of pod %s/%s: %w", pod.Namespace, pod.Name, err)
		case !match:
			mismatch++
		case !nodeReady(n):
			notReady++
		case n.Spec.Unschedulable:
			cordoned++
		default:
			fit = append(fit, n)
		}
	}
	if len(fit) == 0 {
		var parts []string
		for _, c := range []struct {
			n    int
			what string
		}{{mismatch, "didn't match Pod's node affinity/selector"}, {notReady, "were not ready"}, {cordoned, "were unschedulable"}} {
			if c.n > 0 {
				parts = append(parts, fmt.Sprintf("%d node(s) %s", c.n, c.what))
			}
		}
		return "", fmt.Sprintf("0/%d nodes are available: %s.", all, strings.Join(parts, ", ")), nil
	}
	// The podvisor node when it fits (the supervisor's capacity), else the
	// least loaded worker node.
	count := map[string]int{}
	for _, o := range pods.List() {
		if p := o.(*corev1.Pod); p.Spec.NodeName != "" {
			count[p.Spec.NodeName]++
		}
	}
	slices.SortFunc(fit, func(x, y *corev1.Node) int {
		switch {
		case x.Name == b.Node:
			return -1
		case y.Name == b.Node:
			return 1
		case count[x.Name] != count[y.Name]:
			return count[x.Name] - count[y.Name]
		}
		return strings.Compare(x.Name, y.Name)
	})
	return fit[0].Name, "", nil
}

// unschedulable says on the pod why it stays Pending (once per message).
func (b *Binder) unschedulable(ctx context.Context, pod *corev1.Pod, why string) error {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == ReasonUnschedulable && c.Message == why {
			return nil
		}
	}
	p := pod.DeepCopy()
	cond := corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: ReasonUnschedulable,
		Message: why, LastTransitionTime: metav1.Now()}
	i := slices.IndexFunc(p.Status.Conditions, func(c corev1.PodCondition) bool { return c.Type == corev1.PodScheduled })
	if i < 0 {
		p.Status.Conditions = append(p.Status.Conditions, cond)
	} else {
		p.Status.Conditions[i] = cond
	}
	p.Status.Phase = corev1.PodPending
	_, err := b.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return nil // changed meanwhile (the update requeues it), or gone
	}
	if err == nil {
		b.Logger.Info("pod unschedulable", "pod", p.Namespace+"/"+p.Name, "why", why)
	}
	return err
}
