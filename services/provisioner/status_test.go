package provisioner

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/vim25/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Container states as a guest reports them.
func running(name string) corev1.ContainerStatus {
	started := true
	return corev1.ContainerStatus{Name: name, Ready: true, Started: &started,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}
}

func waiting(name, reason string, restarts int32) corev1.ContainerStatus {
	cs := corev1.ContainerStatus{Name: name, RestartCount: restarts,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}}
	if restarts > 0 {
		cs.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error"}
	}
	return cs
}

func exited(name string, code int32) corev1.ContainerStatus {
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	return corev1.ContainerStatus{Name: name,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason}}}
}

// report is what the host agent publishes for a pod's VM.
func report(acc *events.PodAccepted, vm, boot string, seq uint64, statuses ...corev1.ContainerStatus) *events.PodContainersReported {
	return &events.PodContainersReported{PodRef: acc.PodRef, Host: "esx-1-01",
		VM: vm, BootID: boot, Seq: seq, Phase: events.GuestPhaseRunning, ContainerStatuses: statuses}
}

// startPod runs a pod to Starting (its VM on, no guest report yet).
func (e *env) startPod(svc *Service, pod *corev1.Pod) (*events.PodAccepted, *events.PodRecord) {
	e.T.Helper()
	acc, _ := e.provision(pod, e.DC.Hosts()[0].Name)
	return acc, e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
}

// fold publishes a report and waits until the record holds it.
func (e *env) fold(svc *Service, p *events.PodContainersReported) *events.PodRecord {
	e.T.Helper()
	e.Send("podvisor/hostagent", events.TypePodContainersReported, p)
	return e.waitRecord(svc, p.Namespace, p.Name, func(r *events.PodRecord) bool {
		return r.Guest != nil && r.Guest.BootID == p.BootID && r.Guest.Seq == p.Seq
	})
}

// While its init containers run the pod says so, which one and how many
// completed (kubectl's Init:N/M): not that its containers are being
// created, nor that it waits for a report that came.
func TestRunningInitContainersSayTheyRun(t *testing.T) {
	e := newEnv(t)
	simtest.CreateDisks(t, e.vc, e.dco, "[shared-ds] podvisor-images", imageDisk("migrate"), imageDisk("seed"))
	svc, _ := e.start(testConfig())
	pod := testPod("inits")
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "registry.local/app:1.0"}, {Name: "seed", Image: "registry.local/app:1.0"}}
	acc, r := e.startPod(svc, pod)
	behind := []corev1.ContainerStatus{waiting("app", reasonPodInitializing, 0), waiting("sidecar", reasonPodInitializing, 0), waiting("logger", reasonPodInitializing, 0)}
	creating := []corev1.ContainerStatus{waiting("app", events.ReasonContainerCreating, 0), waiting("sidecar", events.ReasonContainerCreating, 0), waiting("logger", events.ReasonContainerCreating, 0)}
	for i, tc := range []struct {
		init, ctrs              []corev1.ContainerStatus
		wantReason, wantMessage string
	}{
		{[]corev1.ContainerStatus{running("migrate"), waiting("seed", reasonPodInitializing, 0)}, behind,
			reasonPodInitializing, "init container migrate running (0 of 2 completed)"},
		{[]corev1.ContainerStatus{exited("migrate", 0), running("seed")}, behind,
			reasonPodInitializing, "init container seed running (1 of 2 completed)"},
		{[]corev1.ContainerStatus{exited("migrate", 0), exited("seed", 0)}, creating,
			events.ReasonContainerCreating, "the guest is starting the containers"},
	} {
		rep := report(acc, r.VMName, "boot-1", uint64(i+1), tc.ctrs...)
		rep.InitContainerStatuses = tc.init
		got := e.fold(svc, rep)
		if got.Phase != events.PodPhaseStarting || got.Reason != tc.wantReason || got.Message != tc.wantMessage {
			t.Errorf("report %d: phase %s reason %q message %q; want Starting, %s, %q", i+1, got.Phase, got.Reason, got.Message, tc.wantReason, tc.wantMessage)
		}
	}

	// One that fails under Never fails the pod, named as an init
	// container: the containers never ran.
	pod = testPod("initfails")
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "registry.local/app:1.0"}}
	acc, r = e.startPod(svc, pod)
	rep := report(acc, r.VMName, "boot-1", 1, behind...)
	rep.InitContainerStatuses = []corev1.ContainerStatus{exited("migrate", 5)}
	e.fold(svc, rep)
	r = e.waitRecord(svc, "default", "initfails", func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseFailed })
	if want := "init container migrate exited 5 (Error)"; r.Message != want {
		t.Errorf("pod failed by its init container: reason %q message %q, want %q", r.Reason, r.Message, want)
	}
}

func TestContainerReportsMakeTheStatus(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	ctx := context.Background()

	acc, r := e.startPod(svc, testPod("alpha"))
	vm := r.VMName
	running3 := func(boot string, seq uint64) *events.PodContainersReported {
		return report(acc, vm, boot, seq, running("app"), running("sidecar"), running("logger"))
	}

	// Some containers started: still Starting, no pod.running.
	r = e.fold(svc, report(acc, vm, "boot-1", 1, running("app"), waiting("sidecar", "ContainerCreating", 0), waiting("logger", "ContainerCreating", 0)))
	if r.Phase != events.PodPhaseStarting || r.IsTrue(events.PodConditionContainersReady) ||
		len(testenv.All[events.PodRunning](e.Env, nil)) != 0 {
		t.Fatalf("after a partial report: phase %s conditions %+v", r.Phase, r.Conditions)
	}
	if r.Reason != events.ReasonContainerCreating {
		t.Errorf("after a partial report: reason %q, want %s", r.Reason, events.ReasonContainerCreating)
	}

	// A container the runtime cannot start (StartError), retried under
	// Always, never ran: the pod is not Running.
	neverRan := waiting("sidecar", "CrashLoopBackOff", 0)
	neverRan.State.Waiting.Message = "back-off 10s restarting failed container=sidecar"
	neverRan.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 128, Reason: "StartError"}
	r = e.fold(svc, report(acc, vm, "boot-1", 2, running("app"), neverRan, running("logger")))
	if r.Phase != events.PodPhaseStarting || len(testenv.All[events.PodRunning](e.Env, nil)) != 0 {
		t.Fatalf("a container that never started: phase %s", r.Phase)
	}
	// It says why on the pod, not that its containers are being created.
	if want := "container sidecar: back-off 10s restarting failed container=sidecar"; r.Reason != "CrashLoopBackOff" || r.Message != want {
		t.Errorf("a container that never started: reason %q message %q, want CrashLoopBackOff and %q", r.Reason, r.Message, want)
	}

	// Its next instance being created: the reason goes with the trouble.
	creating := waiting("sidecar", events.ReasonContainerCreating, 0)
	creating.LastTerminationState = neverRan.LastTerminationState
	r = e.fold(svc, report(acc, vm, "boot-1", 3, running("app"), creating, running("logger")))
	if r.Phase != events.PodPhaseStarting || r.Reason != events.ReasonContainerCreating {
		t.Errorf("the container being created again: phase %s reason %q, want Starting and %s", r.Phase, r.Reason, events.ReasonContainerCreating)
	}

	// Every container started: Running, announced once.
	r = e.fold(svc, running3("boot-1", 4))
	run := testenv.Wait(e.Env, func(p *events.PodRunning) bool { return p.UID == acc.UID })
	if r.Phase != events.PodPhaseRunning || r.Reason != "" || run.VM != r.VMRef ||
		!r.IsTrue(events.PodConditionContainersReady) || !r.IsTrue(events.PodConditionReady) || !r.IsTrue(events.PodConditionInitialized) {
		t.Fatalf("after all started: phase %s reason %q pod.running %+v conditions %+v", r.Phase, r.Reason, run, r.Conditions)
	}
	kp := r.KubernetesPod()
	if kp.Status.Phase != corev1.PodRunning || len(kp.Status.ContainerStatuses) != 3 || kp.Status.ContainerStatuses[1].State.Running == nil ||
		!strings.HasPrefix(kp.Status.ContainerStatuses[0].ImageID, "sha256:") {
		t.Errorf("kubernetes status = %+v", kp.Status)
	}

	// Stale reports change nothing: an older seq of the same boot, and a
	// report from a VM that is not the pod's (an earlier placement's).
	h := handling{s: svc, log: svc.log}
	for _, stale := range []*events.PodContainersReported{
		report(acc, vm, "boot-1", 1, waiting("app", "ContainerCreating", 0), waiting("sidecar", "ContainerCreating", 0), waiting("logger", "ContainerCreating", 0)),
		report(acc, vm, "boot-1", 2, exited("app", 1), exited("sidecar", 1), exited("logger", 1)),
		report(acc, vm+"-1", "boot-9", 9, exited("app", 1), exited("sidecar", 1), exited("logger", 1)),
	} {
		before := e.record(svc, "default", "alpha")
		if err := h.containersReported(ctx, stale); err != nil {
			t.Fatalf("stale report: %v", err)
		}
		if after := e.record(svc, "default", "alpha"); after.ResourceVersion != before.ResourceVersion {
			t.Errorf("stale report (vm %s boot %s seq %d) was folded: %+v", stale.VM, stale.BootID, stale.Seq, after.Guest)
		}
	}

	// A crash-looping container: the pod stays Running, not ready.
	r = e.fold(svc, report(acc, vm, "boot-1", 5, running("app"), waiting("sidecar", "CrashLoopBackOff", 2), running("logger")))
	c, _ := r.Condition(events.PodConditionContainersReady)
	if r.Phase != events.PodPhaseRunning || c.Status != events.ConditionFalse || c.Reason != ReasonContainersNotReady || !strings.Contains(c.Message, "sidecar") {
		t.Errorf("crash loop: phase %s ContainersReady %+v", r.Phase, c)
	}
	if cs := r.KubernetesPod().Status.ContainerStatuses[1]; cs.RestartCount != 2 || cs.State.Waiting == nil || cs.State.Waiting.Reason != "CrashLoopBackOff" {
		t.Errorf("crash-looping container status = %+v", cs)
	}
	// A new boot of the same VM starts its seq again: it is folded. Its
	// agent counts from zero; the record counts what came before and the
	// boot's start of each container as a restart (the app was running:
	// it ended unknown; the sidecar keeps its last termination).
	if r = e.fold(svc, running3("boot-2", 1)); r.Guest.Seq != 1 || !r.IsTrue(events.PodConditionContainersReady) {
		t.Errorf("report of a new boot not folded: %+v", r.Guest)
	}
	restarts := func(r *events.PodRecord) (out []int32) {
		for _, cs := range r.KubernetesPod().Status.ContainerStatuses {
			out = append(out, cs.RestartCount)
		}
		return out
	}
	if got := restarts(r); !slices.Equal(got, []int32{1, 3, 1}) {
		t.Errorf("restart counts after the guest booted again: %v, want [1 3 1]", got)
	}
	if last := r.ContainerStatuses[0].LastTerminationState.Terminated; last == nil || last.Reason != reasonGuestRestarted || last.ExitCode != 255 {
		t.Errorf("lastState of a container the reboot ended: %+v", r.ContainerStatuses[0].LastTerminationState)
	} else if next := r.ContainerStatuses[0].State.Running; last.FinishedAt.IsZero() || last.FinishedAt.Before(&last.StartedAt) ||
		next == nil || next.StartedAt.Before(&last.FinishedAt) {
		// kubectl describe prints a zero finishedAt as year 1; the end lies
		// between the old start and the next boot's.
		t.Errorf("lastState of a container the reboot ended: started %v, finished %v; running again since %v", last.StartedAt, last.FinishedAt, next)
	}
	if last := r.ContainerStatuses[1].LastTerminationState.Terminated; last == nil || last.Reason != "Error" {
		t.Errorf("lastState of the crash-looping container: %+v", r.ContainerStatuses[1].LastTerminationState)
	}
	// The boot's own restarts add to them, with the guest's lastState.
	crashed := running("app")
	crashed.RestartCount = 1
	crashed.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}
	r = e.fold(svc, report(acc, vm, "boot-2", 2, crashed, running("sidecar"), running("logger")))
	if got := restarts(r); !slices.Equal(got, []int32{2, 3, 1}) {
		t.Errorf("restart counts after a restart in the new boot: %v, want [2 3 1]", got)
	}
	if last := r.ContainerStatuses[0].LastTerminationState.Terminated; last == nil || last.Reason != "OOMKilled" {
		t.Errorf("lastState after a restart in the new boot: %+v", r.ContainerStatuses[0].LastTerminationState)
	}
	// A third boot carries the sum.
	if r = e.fold(svc, running3("boot-3", 1)); !slices.Equal(restarts(r), []int32{3, 4, 2}) {
		t.Errorf("restart counts after a third boot: %v, want [3 4 2]", restarts(r))
	}
	if n := testenv.CountIDs(e.Env, func(p *events.PodRunning) bool { return p.UID == acc.UID }); n != 1 {
		t.Errorf("%d pod.running for one placement, want 1", n)
	}

	// restartPolicy Never: all exit 0 → Succeeded; one exit 3 → Failed,
	// the VM kept with its containers' logs until the pod is deleted.
	for _, tt := range []struct {
		name        string
		statuses    []corev1.ContainerStatus
		wantPhase   string
		wantMessage string
		wantReady   string // ContainersReady's reason, as the kubelet's
	}{
		{"done", []corev1.ContainerStatus{exited("app", 0), exited("sidecar", 0), exited("logger", 0)}, events.PodPhaseSucceeded, "", ReasonPodCompleted},
		{"broken", []corev1.ContainerStatus{exited("app", 3), exited("sidecar", 0), exited("logger", 0)}, events.PodPhaseFailed, "app exited 3", ReasonPodFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := testPod(tt.name)
			pod.Spec.RestartPolicy = corev1.RestartPolicyNever
			acc, r := e.startPod(svc, pod)
			r = e.fold(svc, report(acc, r.VMName, "b", 1, tt.statuses...))
			if r.Phase != tt.wantPhase || !strings.Contains(r.Message, tt.wantMessage) || r.IsTrue(events.PodConditionReady) {
				t.Errorf("phase %s reason %q message %q, want %s with %q", r.Phase, r.Reason, r.Message, tt.wantPhase, tt.wantMessage)
			}
			if c, _ := r.Condition(events.PodConditionContainersReady); c.Status != events.ConditionFalse || c.Reason != tt.wantReady {
				t.Errorf("ContainersReady %+v, want False, %s", c, tt.wantReady)
			}
			want := map[string]corev1.PodPhase{events.PodPhaseSucceeded: corev1.PodSucceeded, events.PodPhaseFailed: corev1.PodFailed}[tt.wantPhase]
			if got := r.KubernetesPod().Status.Phase; got != want {
				t.Errorf("kubernetes phase %s, want %s", got, want)
			}
			if len(e.vmsNamed(r.VMName)) != 1 || r.VMRef == "" {
				t.Errorf("the VM of a finished pod is gone (ref %q)", r.VMRef)
			}
			// Drift repair leaves it alone.
			if rep, err := svc.Resync(ctx); err != nil || len(rep) != 0 || len(e.vmsNamed(r.VMName)) != 1 {
				t.Errorf("resync of a finished pod: %v %v", rep, err)
			}
		})
	}
}

func TestSilentGuestIsReportedThenRepaired(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.GuestTimeout = 300 * time.Millisecond
	cfg.GuestRepairs = 1
	svc, _ := e.start(cfg)
	ctx := context.Background()

	_, quiet := e.startPod(svc, testPod("quiet"))
	talkerAcc, talker := e.startPod(svc, testPod("talker"))
	e.fold(svc, report(talkerAcc, talker.VMName, "b", 1, running("app"), running("sidecar"), running("logger")))

	// resyncUntil runs drift repair until the quiet pod's record satisfies
	// pred, and returns it with what the passes repaired.
	resyncUntil := func(what string, pred func(*events.PodRecord) bool) (*events.PodRecord, RepairReport) {
		t.Helper()
		total := RepairReport{}
		deadline := time.Now().Add(10 * time.Second)
		for {
			rep, err := svc.Resync(ctx)
			if err != nil {
				t.Fatalf("Resync: %v", err)
			}
			for k, n := range rep {
				total[k] += n
			}
			if r := e.record(svc, "default", "quiet"); pred(r) {
				return r, total
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s; record %+v", what, e.record(svc, "default", "quiet"))
			}
		}
	}

	// Past the timeout the silence is reported on the pod, nothing else.
	r, rep := resyncUntil("silence reported", func(r *events.PodRecord) bool { return !r.IsTrue(events.PodConditionVMReady) })
	c, _ := r.Condition(events.PodConditionVMReady)
	if c.Reason != ReasonGuestSilent || r.Reason != ReasonGuestSilent || r.Phase != events.PodPhaseStarting || len(rep) != 0 {
		t.Fatalf("after the timeout: VMReady %+v reason %q phase %s repairs %v", c, r.Reason, r.Phase, rep)
	}
	if kp := r.KubernetesPod(); kp.Status.Phase != corev1.PodPending || kp.Status.ContainerStatuses[0].State.Waiting.Reason != events.ReasonContainerCreating {
		t.Errorf("a silent pod shows %s / %+v", kp.Status.Phase, kp.Status.ContainerStatuses[0].State)
	}
	// Then repaired: a power cycle, VM kept, its clock restarted.
	r, rep = resyncUntil("power cycle", func(r *events.PodRecord) bool { return r.GuestRepairs == 1 })
	if rep[RepairGuestSilent] != 1 || r.VMRef != quiet.VMRef || !r.IsTrue(events.PodConditionVMReady) {
		t.Fatalf("power cycle: repairs %v vm %s (was %s) conditions %+v", rep, r.VMRef, quiet.VMRef, r.Conditions)
	}
	if vms := e.vmsNamed(quiet.VMName); len(vms) != 1 || vms[0].PowerState != types.VirtualMachinePowerStatePoweredOn {
		t.Fatalf("after the power cycle: %+v", vms)
	}
	// Still silent past the budget of cycles: reported again, then the VM
	// is created anew.
	r, rep = resyncUntil("re-created", func(r *events.PodRecord) bool { return r.VMRef != quiet.VMRef && r.Phase == events.PodPhaseStarting })
	if rep[RepairGuestRecreate] != 1 || r.GuestRepairs != 0 || !r.IsTrue(events.PodConditionVMReady) {
		t.Errorf("recreate: repairs %v record %+v", rep, r)
	}
	if vm, _ := e.vms.Get(ctx, vmRef(quiet.VMRef)); vm != nil {
		t.Errorf("the silent guest's old VM %s still exists", quiet.VMRef)
	}
	if vms := e.vmsNamed(quiet.VMName); len(vms) != 1 || vms[0].Ref.Value != r.VMRef {
		t.Errorf("VMs named %s: %+v, want the new one only", quiet.VMName, vms)
	}

	// A guest that reported is never touched.
	if tr := e.record(svc, "default", "talker"); tr.VMRef != talker.VMRef || tr.GuestRepairs != 0 || !tr.IsTrue(events.PodConditionVMReady) {
		t.Errorf("the talking pod was repaired: %+v", tr)
	}
}

// A guest that evicted its pod (an emptyDir past its sizeLimit) fails it
// with reason Evicted and the guest's message, as the kubelet's eviction
// does, even with restartPolicy Always.
func TestAnEvictionByTheGuestFailsThePod(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	acc, r := e.startPod(svc, testPod("evicted"))
	e.fold(svc, report(acc, r.VMName, "b", 1, running("app"), running("sidecar"), running("logger")))
	msg := `Usage of EmptyDir volume "scratch" exceeds the limit "1Mi".`
	p := report(acc, r.VMName, "b", 2, exited("app", 137), exited("sidecar", 137), exited("logger", 137))
	p.Phase, p.Reason, p.Message = events.GuestPhaseFailed, guestchannel.ReasonEvicted, msg
	r = e.fold(svc, p)
	if r.Phase != events.PodPhaseFailed || r.Reason != guestchannel.ReasonEvicted || r.Message != msg {
		t.Errorf("phase %s reason %q message %q, want Failed, Evicted, %q", r.Phase, r.Reason, r.Message, msg)
	}
	if k := r.KubernetesPod().Status; k.Phase != corev1.PodFailed || k.Reason != guestchannel.ReasonEvicted {
		t.Errorf("kubernetes status phase %s reason %q, want Failed, Evicted", k.Phase, k.Reason)
	}
}
