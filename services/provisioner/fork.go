package provisioner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/bus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// initTemplates sets up forking from templates when Config.TemplatesWarm
// asks for it (package templates).
func (s *Service) initTemplates(ctx context.Context) error {
	if s.cfg.TemplatesWarm == 0 {
		return nil
	}
	kv, err := s.bus.KV(ctx, bus.BucketPodTemplates)
	if err != nil {
		return fmt.Errorf("provisioner: pod-templates bucket (is the topology declared?): %w", err)
	}
	s.starts, err = otel.GetMeterProvider().Meter(instrumentation).Int64Counter(
		"podvisor_provisioner_vm_starts_total",
		metric.WithDescription("Pod VMs started, by how (forked, created) and why a pod VM was created rather than forked."),
		metric.WithUnit("{vm}"),
	)
	if err != nil {
		return fmt.Errorf("provisioner: starts counter: %w", err)
	}
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	s.templates = templates.New(templates.Config{
		Warm: s.cfg.TemplatesWarm, Agent: s.cfg.templateAgent(),
		// With guests a fork waits for the template's guest to be prepared.
		AwaitGuest: s.cfg.AwaitGuestStop,
		ChannelKey: s.channelKey,
	}, kv, s.vms, fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:])), s.log)
	return nil
}

// forkVM starts the pod VM as an instant clone of its shape's template
// when it can (the VM comes back powered on); otherwise it returns no VM
// and the caller creates it. Either way the pod's VMForked condition says
// which and why (saved with the record's next write), and the reason is
// logged and counted.
func (s *Service) forkVM(ctx context.Context, r *events.PodRecord, spec podvm.Spec, p podvm.Placement) (*podvm.VM, error) {
	if s.templates == nil {
		return nil, nil
	}
	if c, ok := r.Condition(events.PodConditionVMForked); ok && c.Status == events.ConditionFalse && c.Reason == templates.ReasonInstantCloneFailed {
		// The fork tried before the network was attached failed: the pod
		// VM is created, as after any failed fork, not forked again.
		s.starts.Add(ctx, 1, metric.WithAttributes(attribute.String("how", "created"), attribute.String("reason", c.Reason)))
		s.log.Info("pod VM created, not forked", "key", r.Key(), "reason", c.Reason, "message", c.Message)
		return nil, nil
	}
	ctx, span := s.span(ctx, "provisioner.instant_clone", r, attribute.String("vm.name", spec.Name))
	vm, out := s.templates.Fork(ctx, spec, p, &r.Pod)
	span.SetAttributes(attribute.String("template", out.Template), attribute.String("reason", out.Reason), attribute.Bool("template.read", out.ReadTemplate), attribute.Bool("template.record.read", out.ReadRecord))
	span.End()
	how := "created"
	status := events.ConditionFalse
	if out.Forked {
		how, status = "forked", events.ConditionTrue
	}
	s.starts.Add(ctx, 1, metric.WithAttributes(attribute.String("how", how), attribute.String("reason", out.Reason)))
	r.SetCondition(events.PodConditionVMForked, status, out.Reason, out.Message, s.now().UTC())
	if !out.Forked {
		s.log.Info("pod VM created, not forked", "key", r.Key(), "reason", out.Reason, "message", out.Message)
		return nil, nil
	}
	vm.UID, vm.Namespace, vm.Pod = r.UID, r.Namespace, r.Name
	s.log.Info("pod VM forked", "key", r.Key(), "vm", vm.Ref.Value, "template", out.Template)
	// Noted, not saved: the caller saves it with pod.vm.ready, as it does
	// a created VM. A crash before that finds the VM by its name (the
	// record holds the reserved create attempt), as after a create whose
	// task was never recorded.
	noteVM(r, vm, s.now().UTC())
	return vm, nil
}

// templateReported takes the report of a template's guest.
func (s *Service) templateReported(ctx context.Context, p *events.PodContainersReported) error {
	if s.templates == nil {
		return nil
	}
	return s.templates.Observe(ctx, p)
}
