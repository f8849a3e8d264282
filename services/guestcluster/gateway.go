package guestcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// queryTimeout bounds the work of one query: well within the window in
// which the service's identity may answer (bus.AnswerWindow).
const queryTimeout = 15 * time.Second

// serveQueries answers every guest cluster's queries until ctx ends, in a
// queue group that replicas share, through bus.ServeMsgWithin: a query
// whose node has stopped waiting (bus.HeaderReplyBy) is dropped rather than
// answered, and none is answered late (an answer past the identity's
// response window is a permissions violation).
func (s *Service) serveQueries(ctx context.Context) error {
	return s.bus.ServeMsgWithin(ctx, events.SubjectGuestClusterQueryAll, queryTimeout, s.onQuery)
}

// onQuery answers one query of a guest cluster's node. The subject names
// the guest cluster; its identity can publish on no other's. A refusal is
// an answer (GuestPodReply.Error), as the node reads it.
func (s *Service) onQuery(ctx context.Context, m *nats.Msg) ([]byte, error) {
	ns, name, op, ok := parseQuerySubject(m.Subject)
	if !ok {
		return replyErr(fmt.Errorf("subject %s: want pv.query.guestcluster.<namespace>.<name>.<op>", m.Subject))
	}
	log := s.log.With("guestcluster", ns+"/"+name, "op", op)
	rec, _, err := s.clusters.Get(ctx, events.GuestClusterRecordKey(ns, name))
	switch {
	case err != nil:
		return replyErr(err)
	case rec == nil || rec.Phase == events.GuestClusterPhaseDeleting:
		return replyErr(fmt.Errorf("guest cluster %s/%s does not exist or is being deleted", ns, name))
	}
	switch op {
	case events.GuestOpPodCreate:
		var req events.GuestPodRequest
		if err := json.Unmarshal(m.Data, &req); err != nil || req.Pod == nil {
			return replyErr(fmt.Errorf("pod.create: want a GuestPodRequest with pod (%v)", err))
		}
		return reply(s.createPod(ctx, &rec.GuestClusterRecord, &req), log)
	case events.GuestOpPodDelete:
		var req events.GuestPodRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			return replyErr(fmt.Errorf("pod.delete: %w", err))
		}
		return reply(s.deletePod(ctx, &rec.GuestClusterRecord, &req), log)
	case events.GuestOpPodList:
		pods, err := s.guestPods(ctx, &rec.GuestClusterRecord)
		if err != nil {
			return replyErr(err)
		}
		out := events.GuestPodReply{}
		for _, p := range pods {
			out.Pods = append(out.Pods, p.KubernetesPod())
		}
		if rec.Pods != len(pods) {
			s.countPods(ctx, rec, len(pods))
		}
		return reply(out, log)
	case events.GuestOpPodLogs, events.GuestOpPodExec:
		return s.forwardStream(ctx, &rec.GuestClusterRecord, op, m)
	case events.GuestOpNodeList:
		nodes, err := s.refreshWorkers(ctx, rec)
		if err != nil {
			return replyErr(err)
		}
		return reply(events.GuestPodReply{Nodes: nodes}, log)
	default:
		return replyErr(fmt.Errorf("op %q: want one of pod.create, pod.delete, pod.list, pod.logs, pod.exec, node.list", op))
	}
}

// countPods records how many pods the guest cluster has, as its node's
// last list found (written only when the count changes).
func (s *Service) countPods(ctx context.Context, rec *clusterRecord, n int) {
	_, err := s.clusters.Mutate(ctx, rec.Key(), func(r *clusterRecord) error {
		if r.Pods == n || r.Phase == events.GuestClusterPhaseDeleting {
			return record.ErrUnchanged
		}
		r.Pods = n
		return nil
	})
	if err != nil {
		s.log.Warn("count pods", "guestcluster", rec.Key(), "err", err)
	}
}

func parseQuerySubject(subject string) (ns, name, op string, ok bool) {
	rest, found := strings.CutPrefix(subject, "pv.query.guestcluster.")
	if !found {
		return "", "", "", false
	}
	parts := strings.SplitN(rest, ".", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

func reply(r events.GuestPodReply, log interface{ Info(string, ...any) }) ([]byte, error) {
	if r.Error != "" {
		log.Info("guest request refused", "err", r.Error)
	}
	return json.Marshal(r)
}

func replyErr(err error) ([]byte, error) {
	return json.Marshal(events.GuestPodReply{Error: err.Error()})
}

// supervisorRef is where a guest pod runs on the supervisor; an error
// when the namespace asked for is not one the guest cluster may use.
func supervisorRef(rec *events.GuestClusterRecord, req *events.GuestPodRequest) (ns, name string, err error) {
	if req.GuestNamespace == "" || req.GuestName == "" {
		return "", "", errors.New("guestNamespace and guestName: required")
	}
	allowed := rec.AllowedNamespaces()
	ns = req.Namespace
	if ns == "" {
		ns = events.GuestPodNamespace(allowed, req.GuestNamespace)
	} else if !slices.Contains(allowed, ns) {
		return "", "", fmt.Errorf("namespace %s: guest cluster %s/%s may run pods only in %s", ns, rec.Namespace, rec.Name, strings.Join(allowed, ", "))
	}
	return ns, events.GuestPodName(rec.Name, req.GuestNamespace, req.GuestName), nil
}

// createPod asks for the supervisor pod of a guest pod. A repeated
// request for the same spec is a no-op at the provisioner.
func (s *Service) createPod(ctx context.Context, rec *events.GuestClusterRecord, req *events.GuestPodRequest) events.GuestPodReply {
	ns, name, err := supervisorRef(rec, req)
	if err != nil {
		return events.GuestPodReply{Error: err.Error()}
	}
	pod := supervisorPod(rec, req, ns, name)
	ev := &events.PodRequested{Pod: *pod}
	if err := ev.Validate(); err != nil {
		return events.GuestPodReply{Error: fmt.Sprintf("pod %s/%s: %v", req.GuestNamespace, req.GuestName, err)}
	}
	if err := s.out.Emit(ctx, nil, ev); err != nil {
		return events.GuestPodReply{Error: err.Error()}
	}
	return events.GuestPodReply{Namespace: ns, Name: name}
}

// supervisorPod is the guest pod as the supervisor runs it: its containers,
// volumes and policies; not what belongs to the guest cluster (node,
// scheduler, service account, tolerations, priority).
func supervisorPod(rec *events.GuestClusterRecord, req *events.GuestPodRequest, ns, name string) *corev1.Pod {
	g := req.Pod
	pod := &corev1.Pod{}
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.Namespace, pod.Name = ns, name
	pod.Labels = map[string]string{}
	for k, v := range g.Labels {
		pod.Labels[k] = v
	}
	pod.Labels[events.LabelGuestCluster] = rec.Name
	pod.Labels[events.LabelGuestClusterNamespace] = rec.Namespace
	pod.Labels[events.LabelGuestNamespace] = req.GuestNamespace
	pod.Labels[events.LabelGuestName] = req.GuestName
	pod.Annotations = g.Annotations
	sp := g.Spec.DeepCopy()
	sp.NodeName, sp.SchedulerName, sp.ServiceAccountName, sp.DeprecatedServiceAccount = "", "", "", ""
	sp.AutomountServiceAccountToken, sp.Tolerations, sp.Priority, sp.PriorityClassName = nil, nil, nil, ""
	sp.PreemptionPolicy, sp.EnableServiceLinks, sp.NodeSelector, sp.Affinity = nil, nil, nil, nil
	sp.DNSPolicy = ""
	// The guest's API server defaults an empty pod-level securityContext,
	// which podvisor refuses as a pod-level setting it does not support;
	// an empty one asks for nothing.
	if sp.SecurityContext != nil && reflect.DeepEqual(*sp.SecurityContext, corev1.PodSecurityContext{}) {
		sp.SecurityContext = nil
	}
	pod.Spec = *sp
	return pod
}

// deletePod asks for the deletion of a guest pod's supervisor pod.
func (s *Service) deletePod(ctx context.Context, rec *events.GuestClusterRecord, req *events.GuestPodRequest) events.GuestPodReply {
	ns, name, err := supervisorRef(rec, req)
	if err != nil {
		return events.GuestPodReply{Error: err.Error()}
	}
	p, _, err := s.pods.Get(ctx, events.PodRecordKey(ns, name))
	if err != nil {
		return events.GuestPodReply{Error: err.Error()}
	}
	if p == nil || !ownedBy(p, rec) {
		return events.GuestPodReply{Namespace: ns, Name: name}
	}
	if err := s.out.Emit(ctx, nil, &events.PodDeleteRequested{Namespace: ns, Name: name, UID: p.UID}); err != nil {
		return events.GuestPodReply{Error: err.Error()}
	}
	return events.GuestPodReply{Namespace: ns, Name: name}
}

func ownedBy(p *events.PodRecord, rec *events.GuestClusterRecord) bool {
	l := p.Pod.Labels
	return l[events.LabelGuestCluster] == rec.Name && l[events.LabelGuestClusterNamespace] == rec.Namespace
}

// guestPods are the supervisor pods of the guest cluster.
func (s *Service) guestPods(ctx context.Context, rec *events.GuestClusterRecord) ([]events.PodRecord, error) {
	all, err := s.pods.List(ctx)
	if err != nil {
		return nil, err
	}
	allowed := rec.AllowedNamespaces()
	var out []events.PodRecord
	for i := range all {
		if slices.Contains(allowed, all[i].Namespace) && ownedBy(&all[i], rec) {
			out = append(out, all[i])
		}
	}
	return out, nil
}

// deletePods asks for the deletion of every pod of the guest cluster and
// waits until their records are gone. It returns how many there were.
func (s *Service) deletePods(ctx context.Context, cause *event.Event, rec *events.GuestClusterRecord) (int, error) {
	pods, err := s.askPodDeletions(ctx, cause, rec)
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(s.cfg.DeleteTimeout)
	for {
		left, err := s.guestPods(ctx, rec)
		if err != nil {
			return 0, err
		}
		if len(left) == 0 {
			return len(pods), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d pods of guest cluster %s/%s are still being deleted (first: %s/%s, %s)",
				len(left), rec.Namespace, rec.Name, left[0].Namespace, left[0].Name, left[0].Phase)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// askPodDeletions asks for the deletion of every pod of the guest cluster
// not being deleted yet, and returns them all.
func (s *Service) askPodDeletions(ctx context.Context, cause *event.Event, rec *events.GuestClusterRecord) ([]events.PodRecord, error) {
	pods, err := s.guestPods(ctx, rec)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		if !p.DeletionRequestedAt.IsZero() {
			continue
		}
		if err := s.out.Emit(ctx, cause, &events.PodDeleteRequested{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
			bus.Distinct(p.UID)); err != nil {
			return nil, err
		}
	}
	return pods, nil
}

// forwardStream checks a logs or exec request of a guest pod and hands it
// to the host agent of the pod's VM, with the node's reply subject: the
// host agent streams its answer straight back.
func (s *Service) forwardStream(ctx context.Context, rec *events.GuestClusterRecord, op string, m *nats.Msg) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return json.Marshal(events.PodStreamMessage{Seq: 1, EOF: true, Error: err.Error()})
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(m.Data, &raw); err != nil {
		return fail(fmt.Errorf("%s: %w", op, err))
	}
	var ref struct{ Namespace, Name string }
	_ = json.Unmarshal(m.Data, &ref)
	ns, name, err := supervisorRef(rec, &events.GuestPodRequest{GuestNamespace: ref.Namespace, GuestName: ref.Name})
	if err != nil {
		return fail(err)
	}
	p, _, err := s.pods.Get(ctx, events.PodRecordKey(ns, name))
	switch {
	case err != nil:
		return fail(err)
	case p == nil || !ownedBy(p, rec):
		return fail(fmt.Errorf("pod %s/%s of guest cluster %s/%s not found", ref.Namespace, ref.Name, rec.Namespace, rec.Name))
	case p.Host == "":
		return fail(fmt.Errorf("pod %s/%s is not on a host yet (phase %s)", ref.Namespace, ref.Name, p.Phase))
	}
	for k, v := range map[string]string{"namespace": ns, "name": name, "uid": p.UID} {
		raw[k], _ = json.Marshal(v)
	}
	data, _ := json.Marshal(raw)
	subject := events.SubjectPodLogs(p.Host)
	if op == events.GuestOpPodExec {
		subject = events.SubjectPodExec(p.Host)
	}
	if err := s.bus.Conn().PublishRequest(subject, m.Reply, data); err != nil {
		return fail(err)
	}
	return nil, bus.ErrReplyHandedOn // the host agent streams the answer
}
