package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/sim/guest"
)

// Fork is request → container running for pod VMs forked from a warm
// template (InstantClone) against pod VMs created, in one run on one
// simulated host with guests on: pairs of pods of the same image, one
// created (podvisor.io/instant-clone: "false") then one forked, one pod at
// a time, so each start is measured alone.
type Fork struct {
	// Skipped says why the section did not run (as DataPlane's).
	Skipped string  `json:"skipped,omitempty"`
	Pairs   int     `json:"pairs"`
	Created Latency `json:"created_ms"`
	Forked  Latency `json:"forked_ms"`
	// CreatedVMReady and ForkedVMReady are request → pod.vm.ready (the
	// VM made and powered on): the rest of each start is its guest's.
	CreatedVMReady Latency `json:"created_vm_ready_ms"`
	ForkedVMReady  Latency `json:"forked_vm_ready_ms"`
	NotForked      int     `json:"not_forked"`
	// Resumed counts the forked pod VMs whose guest resumed the template's
	// standby rather than booting (shared/sim/standby.go).
	Resumed int `json:"resumed"`
	// CreatedToForkedP50 is Created.P50 / Forked.P50 (target ≥ 3).
	CreatedToForkedP50 float64 `json:"created_to_forked_p50"`
}

// runFork starts an all-in-one with one host, guests on and one warm
// template per host, prepares the template with a first pod, then
// measures cfg.ForkPairs created and forked pods alternately.
func runFork(ctx context.Context, cfg Config, p progress) (*Fork, error) {
	agent := cfg.Agent
	if agent == "" {
		agent = allinone.DefaultAgentPath()
	}
	out := &Fork{Pairs: cfg.ForkPairs}
	if why := dataPlaneReady(agent); why != "" {
		out.Skipped = why
		return out, nil
	}
	sys, b, stop, err := startGuests(ctx, cfg, agent, 1, 1, map[string]string{provisioner.EnvTemplatesWarm: "1"}, bus.IdentityAdmin)
	if err != nil {
		return nil, err
	}
	defer stop()
	if err := waitReady(ctx, b, 1); err != nil {
		return nil, err
	}
	w, err := newWatcher(ctx, b)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag

	// The first pod pulls the image and has the template built; the
	// measured pods start once the template's guest is prepared.
	if _, err := runPods(ctx, b, w, image, []string{"fk-warm"}, 0, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("first pod: %w", err)
	}
	tmpl, err := waitTemplate(ctx, b, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	// The template's first fork boots its standby (shared/sim/standby.go):
	// the guest each later fork resumes, as a child of a running VM does
	// on vSphere. It is not measured.
	if _, _, err := runPodsAnnotated(ctx, b, w, image, "fk-forked-first", map[string]string{events.AnnotationInstantClone: "true"}, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("first fork: %w", err)
	}
	p.say("fork: %d created and %d forked pod VMs, one at a time…", cfg.ForkPairs, cfg.ForkPairs)
	pods, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return nil, err
	}
	var created, forked, createdVM, forkedVM latencies
	for i := range cfg.ForkPairs {
		// The standby the last fork used is replaced in the background:
		// each pair starts once it is there, so that its disk copy and
		// boot take nothing from the pod measured.
		waitStandby(ctx, sys.Datacenter.Guests(), tmpl.VMRef, 30*time.Second)
		for _, fork := range []bool{false, true} {
			name := fmt.Sprintf("fk-created-%03d", i)
			if fork {
				name = fmt.Sprintf("fk-forked-%03d", i)
			}
			lat, vmLat, err := runPodsAnnotated(ctx, b, w, image, name, map[string]string{events.AnnotationInstantClone: fmt.Sprint(fork)}, 2*time.Minute)
			if err != nil {
				return nil, err
			}
			if fork {
				forked.add(lat)
				forkedVM.add(vmLat)
				if e, err := pods.Get(ctx, events.PodRecordKey(Namespace, name)); err == nil {
					var r events.PodRecord
					if json.Unmarshal(e.Value(), &r) == nil && !r.IsTrue(events.PodConditionVMForked) {
						out.NotForked++
					}
					if g, ok := sys.Datacenter.Guests().Guest(r.VMRef); ok && g.Resumed {
						out.Resumed++
					}
				}
			} else {
				created.add(lat)
				createdVM.add(vmLat)
			}
		}
	}
	out.Created, out.Forked = created.latency(), forked.latency()
	out.CreatedVMReady, out.ForkedVMReady = createdVM.latency(), forkedVM.latency()
	if out.Forked.P50 > 0 {
		out.CreatedToForkedP50 = out.Created.P50 / out.Forked.P50
	}
	p.say("fork: created p50 %.0f ms (VM ready %.0f ms), forked p50 %.0f ms (VM ready %.0f ms): %.2fx (%d forks fell back to a create, %d of %d resumed a standby)",
		out.Created.P50, out.CreatedVMReady.P50, out.Forked.P50, out.ForkedVMReady.P50, out.CreatedToForkedP50, out.NotForked, out.Resumed, cfg.ForkPairs)
	return out, nil
}

// runPodsAnnotated requests one pod with annotations and returns the
// milliseconds from its request to its pod.running, and to its
// pod.vm.ready.
func runPodsAnnotated(ctx context.Context, b *bus.Bus, w *watcher, image, name string, ann map[string]string, timeout time.Duration) (running, vmReady float64, err error) {
	pod := benchPod(name, image)
	pod.Annotations = ann
	pod.Spec.Containers[0].Command = dataPlaneCommand
	pod.Spec.TerminationGracePeriodSeconds = new(int64)
	ev, err := bus.NewEvent(Source, events.TypePodRequested, events.PodKey(Namespace, name), &events.PodRequested{Pod: *pod})
	if err != nil {
		return 0, 0, err
	}
	sent := time.Now()
	if err := b.Publish(ctx, ev); err != nil {
		return 0, 0, fmt.Errorf("publish %s: %w", name, err)
	}
	key := events.PodKey(Namespace, name)
	w.waitFor(ctx, timeout, func() bool { _, ok := w.at(key, events.TypePodRunning); return ok })
	at, ok := w.at(key, events.TypePodRunning)
	if !ok {
		return 0, 0, fmt.Errorf("pod %s not running within %s", name, timeout)
	}
	if vm, ok := w.at(key, events.TypePodVMReady); ok {
		vmReady = ms(vm.Sub(sent))
	}
	return ms(at.Sub(sent)), vmReady, nil
}

// waitStandby waits (at most timeout) for the template VM's standby
// guest.
func waitStandby(ctx context.Context, g *guest.Manager, vm string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if _, ok := g.Standby(vm); ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitTemplate waits for a template whose guest is prepared.
func waitTemplate(ctx context.Context, b *bus.Bus, timeout time.Duration) (templates.Record, error) {
	kv, err := b.KV(ctx, bus.BucketPodTemplates)
	if err != nil {
		return templates.Record{}, err
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if lister, err := kv.ListKeys(ctx); err == nil {
			for k := range lister.Keys() {
				if e, err := kv.Get(ctx, k); err == nil {
					var r templates.Record
					if json.Unmarshal(e.Value(), &r) == nil && r.State == templates.StateReady && r.GuestReady {
						return r, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return templates.Record{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return templates.Record{}, fmt.Errorf("no template prepared within %s", timeout)
}
