package hostagent

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// reportNamespace makes report ids: uuid v5 of "<pod uid>/<boot id>/<seq>".
// The agent numbers its reports within a boot, so one report of one boot
// always gets one id: a report published again after a reconnect, or by a
// host agent that restarted, is dropped by the stream's de-duplication.
var reportNamespace = uuid.MustParse("6f7d7c52-8e0e-4c8e-9a7b-2f1de4b0c4a1")

// ReportID is the CloudEvent id of the report of seq in boot of a pod.
func ReportID(podUID, bootID string, seq uint64) string {
	return uuid.NewSHA1(reportNamespace, []byte(podUID+"/"+bootID+"/"+strconv.FormatUint(seq, 10))).String()
}

// report builds the complete report of a pod from the merged container
// states: every container of the pod's spec, in spec order; one the agent
// has not reported yet is waiting (ContainerCreating).
func report(pod *events.PodRecord, h guestchannel.Hello, st guestchannel.Status, byName map[string]guestchannel.ContainerStatus) *events.PodContainersReported {
	r := &events.PodContainersReported{
		PodRef: events.PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Host:   pod.Host, VM: pod.VMName,
		BootID: h.BootID, Seq: st.Seq,
		Phase: st.Phase, Reason: st.Reason, Message: st.Message,
	}
	if r.VM == "" {
		r.VM = "pv-" + pod.UID
	}
	digest := map[string]string{}
	for _, img := range pod.Images {
		digest[img.Container] = img.Digest
	}
	conv := func(c corev1.Container) corev1.ContainerStatus {
		cs, ok := byName[c.Name]
		if !ok {
			cs = guestchannel.ContainerStatus{Name: c.Name, State: guestchannel.ContainerState{Kind: guestchannel.StateWaiting, Reason: "ContainerCreating"}}
		}
		return containerStatus(cs, c.Image, digest[c.Name])
	}
	for _, c := range pod.Pod.Spec.InitContainers {
		r.InitContainerStatuses = append(r.InitContainerStatuses, conv(c))
	}
	for _, c := range pod.Pod.Spec.Containers {
		r.ContainerStatuses = append(r.ContainerStatuses, conv(c))
	}
	if pod.Namespace == events.TemplateNamespace {
		// A template's guest has no record: its containers are the ones
		// it has reported, in name order.
		for _, name := range slices.Sorted(maps.Keys(byName)) {
			r.ContainerStatuses = append(r.ContainerStatuses, containerStatus(byName[name], "", ""))
		}
	}
	return r
}

// containerStatus converts the agent's view of a container to Kubernetes'
// shape; imageID is the image's manifest digest from the pod record.
func containerStatus(cs guestchannel.ContainerStatus, image, imageID string) corev1.ContainerStatus {
	started := cs.Started
	out := corev1.ContainerStatus{
		Name:         cs.Name,
		Image:        image,
		ImageID:      imageID,
		State:        containerState(cs.State),
		RestartCount: cs.RestartCount,
		Ready:        cs.Ready,
		Started:      &started,
	}
	if cs.LastState != nil {
		out.LastTerminationState = containerState(*cs.LastState)
	}
	return out
}

func containerState(s guestchannel.ContainerState) corev1.ContainerState {
	t := func(p *time.Time) metav1.Time {
		if p == nil {
			return metav1.Time{}
		}
		return metav1.NewTime(*p)
	}
	switch s.Kind {
	case guestchannel.StateRunning:
		return corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: t(s.StartedAt)}}
	case guestchannel.StateTerminated:
		return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: s.ExitCode, Signal: s.Signal, Reason: s.Reason, Message: s.Message,
			StartedAt: t(s.StartedAt), FinishedAt: t(s.FinishedAt),
		}}
	default:
		reason := s.Reason
		if reason == "" {
			reason = "ContainerCreating"
		}
		return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: s.Message}}
	}
}

// onlyCreating says whether a report says nothing the pod's record does
// not already assume: no guest reason, and every container waiting with
// reason ContainerCreating, never started nor restarted. Such a report is
// what an agent sends at hello, before its first container starts.
func onlyCreating(r *events.PodContainersReported) bool {
	if r.Namespace == events.TemplateNamespace || r.Reason != "" || r.Message != "" ||
		(r.Phase != "" && r.Phase != guestchannel.PhasePending) {
		return false
	}
	for _, cs := range append(slices.Clip(r.InitContainerStatuses), r.ContainerStatuses...) {
		w := cs.State.Waiting
		if w == nil || w.Reason != events.ReasonContainerCreating || w.Message != "" || cs.RestartCount != 0 ||
			cs.LastTerminationState != (corev1.ContainerState{}) || cs.Ready {
			return false
		}
	}
	return true
}

// publishLoop publishes a connection's newest report whenever there is one,
// retrying every second while the bus refuses: reports coalesce, so a burst
// of changes costs one publish and nothing newer is lost. The channel's
// first report, when it only says the containers are being created (what
// the agent sends at hello), waits up to ReportHold for a newer one first
// (a report saying more is published at once, and replaces it). It returns once the channel is closed and the last report
// is out (or cannot be).
func (s *Service) publishLoop(ctx context.Context, pc *podConn) {
	// first: nothing published on this channel yet. Only the first report
	// is held: a later one saying the containers are being created again
	// (an encrypted disk opened after WaitingForKey) clears a reason the
	// record shows, and goes out at once.
	first := true
	for {
		pc.mu.Lock()
		r, closed := pc.latest, pc.closed
		pc.latest = nil
		pc.mu.Unlock()
		if r != nil && first && !closed && s.cfg.ReportHold > 0 && onlyCreating(r) {
			hold := time.NewTimer(s.cfg.ReportHold)
			for held := true; held; {
				select {
				case <-pc.wake:
					// A wake may be the one of the held report itself.
					pc.mu.Lock()
					held = pc.latest == nil && !pc.closed
					pc.mu.Unlock()
				case <-hold.C:
					held = false
				case <-ctx.Done():
					held = false
				}
			}
			hold.Stop()
			pc.mu.Lock()
			if pc.latest != nil {
				// A newer report (or the channel's close) came within
				// the hold: it replaces the held one, whose content it
				// includes (reports are complete).
				r, pc.latest = pc.latest, nil
			}
			pc.mu.Unlock()
		}
		if r != nil {
			first = false
			for attempt := 0; ; attempt++ {
				err := s.publishReport(ctx, r)
				if err == nil {
					break
				}
				pc.log.Warn("publish containers report", "seq", r.Seq, "err", err)
				if ctx.Err() != nil || (closed && attempt >= 3) {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				// A newer report replaces this one.
				pc.mu.Lock()
				if pc.latest != nil {
					r, pc.latest = pc.latest, nil
				}
				pc.mu.Unlock()
			}
			continue
		}
		if closed || ctx.Err() != nil {
			return
		}
		select {
		case <-pc.wake:
		case <-ctx.Done():
		}
	}
}

func (s *Service) publishReport(ctx context.Context, r *events.PodContainersReported) error {
	if err := r.Validate(); err != nil {
		return err
	}
	ev, err := bus.NewEvent(Source, events.TypePodContainersReported, r.ObjectKey(), r)
	if err != nil {
		return err
	}
	ev.SetID(ReportID(r.UID, r.BootID, r.Seq))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return s.bus.Publish(pctx, ev)
}
