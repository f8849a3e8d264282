package scheduler

import (
	"context"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/shared/bus"
)

// publishScheduled announces a placement as the effect of cause (the
// pod.accepted or pod.evicted that asked for it), so a replay publishes the
// same id and the pod's trace continues. The host joins the id (and a VM's
// generation): one cause may place a pod or VM twice (the rescan's stand-in
// cause, one per placement generation, places it again after a host
// refused its network or its room was lost), and the second placement must
// not be dropped as a duplicate of the first.
// Refusals are the hosts that refused the pod's networks on the way.
func (s *Service) publishScheduled(ctx context.Context, cause event.Event, p *framework.PodInfo, pl placement, refusals []events.HostRefusal) error {
	if isVM(p) {
		gen := s.vmGeneration(p.UID)
		return s.out.Emit(ctx, &cause, &events.VMScheduled{
			VMRef: events.VMRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, Generation: gen,
			Host: pl.Host, Cluster: pl.Cluster, ResourcePool: pl.ResourcePool, Datastores: pl.Datastores,
		}, bus.Distinct(fmt.Sprintf("%d/%s", gen, pl.Host)))
	}
	return s.out.Emit(ctx, &cause, &events.PodScheduled{
		PodRef: events.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		Host:   pl.Host, Cluster: pl.Cluster, ResourcePool: pl.ResourcePool, Datastores: pl.Datastores,
		Refusals: refusals,
	}, bus.Distinct(pl.Host))
}

// publishUnschedulable says why no host fits. Its id derives from the cause
// and the message, so that a retry failing for a new reason is not taken
// for a duplicate of the first.
func (s *Service) publishUnschedulable(ctx context.Context, cause event.Event, p *framework.PodInfo, fe *framework.FitError) error {
	reasons := map[string]int{}
	for r, n := range fe.Diagnosis.Reasons {
		if n > 0 {
			reasons[r] = n
		}
	}
	hosts := fe.Diagnosis.Hosts
	sum := 0
	for _, n := range reasons {
		sum += n
	}
	hosts = max(hosts, sum)
	return s.publishUnschedulableMessage(ctx, cause, p, fe.Error(), reasons, hosts)
}

func (s *Service) publishUnschedulableMessage(ctx context.Context, cause event.Event, p *framework.PodInfo, msg string, reasons map[string]int, hosts int) error {
	if isVM(p) {
		return s.out.Emit(ctx, &cause, &events.VMUnschedulable{
			VMRef: events.VMRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, Generation: s.vmGeneration(p.UID),
			Message: msg, Reasons: reasons, Hosts: hosts,
		}, bus.Distinct(msg))
	}
	return s.out.Emit(ctx, &cause, &events.PodUnschedulable{
		PodRef: events.PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID}, Message: msg, Reasons: reasons, Hosts: hosts,
	}, bus.Distinct(msg))
}

// annotate adds the attributes `podvisor trace pod` looks for to the
// handler's span.
func annotate(ctx context.Context, podKey, uid string) {
	span := trace.SpanFromContext(ctx)
	attrs := []attribute.KeyValue{attribute.String("podvisor.service", Name)}
	if podKey != "" {
		attrs = append(attrs, attribute.String("pod", podKey))
	}
	if uid != "" {
		attrs = append(attrs, attribute.String("pod.uid", uid))
	}
	span.SetAttributes(attrs...)
}
