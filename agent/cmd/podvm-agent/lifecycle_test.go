package main

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
)

func withVolume(c guestchannel.Container) guestchannel.Container {
	c.VolumeMounts = []guestchannel.VolumeMount{{Name: "shared", MountPath: "/v"}}
	return c
}

func emptyDir(spec *guestchannel.PodSpec) *guestchannel.PodSpec {
	spec.Volumes = []guestchannel.Volume{{Name: "shared", EmptyDir: &guestchannel.EmptyDir{}}}
	return spec
}

// A container that cannot start (no such program) is retried with
// back-off, and each retry counts as a restart, as in Kubernetes: a crash
// loop shows in restartCount even though no process ever ran.
func TestAContainerThatCannotStartCountsItsRestarts(t *testing.T) {
	needGuest(t)
	broken := guestchannel.Container{Name: "broken", Command: []string{"/no/such/program"}}
	spec := image.Spec("broken", "Always", 1, nil, []guestchannel.Container{broken})
	g := guest(t, spec, guesttest.Options{Backoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	v := g.Host.Wait("two restarts", wait, func(v guesttest.View) bool { return v.Container("broken").RestartCount >= 2 })
	c := v.Container("broken")
	if c.LastState == nil && c.State.Kind != guestchannel.StateTerminated {
		t.Errorf("broken = %+v, want a terminated state or last state", c)
	}
	for _, st := range []*guestchannel.ContainerState{&c.State, c.LastState} {
		if st != nil && st.Kind == guestchannel.StateTerminated && (st.Reason != "StartError" || st.ExitCode != 128) {
			t.Errorf("terminated %+v, want StartError with exit code 128", st)
		}
	}
}

// The first restart of a crashing container is immediate, as the
// kubelet's (its back-off starts with that restart): the container is
// never in CrashLoopBackOff before it restarted once, the restarted
// instance has the ended one as its last state and --previous reads that
// one. The second restart waits the back-off in CrashLoopBackOff.
func TestFirstRestartIsImmediate(t *testing.T) {
	needGuest(t)
	// The second instance exits once the test says so (/v/go).
	crash := withVolume(sh("crash", `n=$(cat /v/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /v/n; echo "instance $n"; `+
		`if [ $n = 2 ]; then while [ ! -f /v/go ]; do sleep 0.05; done; fi; exit 1`))
	spec := emptyDir(image.Spec("first-restart", "Always", 1, nil, []guestchannel.Container{crash}))
	const backoff = 5 * time.Second
	g := guest(t, spec, guesttest.Options{Backoff: backoff, MaxBackoff: 2 * backoff})

	v := g.Host.Wait("crash restarted and running", wait, func(v guesttest.View) bool {
		return v.Container("crash").RestartCount == 1 && running("crash")(v)
	})
	c := v.Container("crash")
	if last := c.LastState; last == nil || last.Kind != guestchannel.StateTerminated || last.Reason != "Error" || last.ExitCode != 1 {
		t.Fatalf("lastState after the first restart = %+v, want the first instance: terminated, Error, exit code 1", last)
	}
	if gap := c.State.StartedAt.Sub(*c.LastState.FinishedAt); gap >= backoff {
		t.Errorf("first restart %s after the first instance ended, want at once (less than the %s back-off)", gap, backoff)
	}
	if prev, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "crash", Previous: true}); prev != "instance 1\n" || errMsg != "" {
		t.Errorf("logs --previous after the first restart = %q, %q; want the first instance's", prev, errMsg)
	}

	if r := g.Host.Exec("crash", nil, "touch", "/v/go"); r.ExitCode != 0 {
		t.Fatalf("touch: %+v", r)
	}
	v = g.Host.Wait("crash in back-off", wait, func(v guesttest.View) bool {
		return v.Container("crash").State.Reason == "CrashLoopBackOff"
	})
	c = v.Container("crash")
	if want := "back-off 5s restarting failed container=crash"; c.RestartCount != 1 || c.State.Message != want ||
		c.LastState == nil || c.LastState.ExitCode != 1 {
		t.Errorf("crash in back-off = %+v, want restart count 1, message %q and the second instance's end as last state", c, want)
	}
	if prev, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "crash", Previous: true}); prev != "instance 2\n" || errMsg != "" {
		t.Errorf("logs --previous in back-off = %q, %q; want the second instance's", prev, errMsg)
	}
	_, reports, _ := g.Host.Snapshot()
	for _, r := range reports {
		for _, c := range r.Containers {
			if c.State.Reason == "CrashLoopBackOff" && c.RestartCount == 0 {
				t.Errorf("CrashLoopBackOff before the first restart: %+v", c)
			}
		}
	}
}

// A crashing container with restartPolicy Always restarts, from the
// second restart on with back-off, its log follows across restarts, --previous reads the instance before,
// and its emptyDir outlives each instance.
func TestRestartBackoffAndLogsAcrossRestarts(t *testing.T) {
	needGuest(t)
	crash := withVolume(sh("crash", `n=$(cat /v/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /v/n; echo "instance $n"; sleep 0.3; exit 1`))
	spec := emptyDir(image.Spec("crashy", "Always", 1, nil, []guestchannel.Container{crash}))
	g := guest(t, spec, guesttest.Options{Backoff: 300 * time.Millisecond, MaxBackoff: 600 * time.Millisecond})

	g.Host.Wait("crash running", wait, running("crash"))
	follow := g.Host.Follow("crash")
	follow.WaitText(t, wait, "instance 1", "instance 2", "instance 3")

	v := g.Host.Wait("three restarts", wait, func(v guesttest.View) bool { return v.Container("crash").RestartCount >= 3 })
	if c := v.Container("crash"); c.LastState == nil || c.LastState.ExitCode != 1 || c.LastState.Reason != "Error" {
		t.Errorf("lastState = %+v, want terminated with exit code 1", c.LastState)
	}
	// Before the second and the third restart the container waits in
	// CrashLoopBackOff (the first is immediate: TestFirstRestartIsImmediate),
	// its restart count going up one at a time.
	_, reports, _ := g.Host.Snapshot()
	backoffs := 0
	lastCount := int32(0)
	for _, r := range reports {
		for _, c := range r.Containers {
			if c.RestartCount < lastCount || c.RestartCount > lastCount+1 {
				t.Errorf("restartCount went from %d to %d", lastCount, c.RestartCount)
			}
			lastCount = c.RestartCount
			if c.State.Kind == guestchannel.StateWaiting && c.State.Reason == "CrashLoopBackOff" {
				backoffs++
				if c.LastState == nil || c.LastState.Kind != guestchannel.StateTerminated {
					t.Errorf("CrashLoopBackOff without the terminated last state: %+v", c)
				}
			}
		}
	}
	if backoffs < 2 {
		t.Errorf("saw %d CrashLoopBackOff reports, want one before each of the 2nd and 3rd restarts", backoffs)
	}
	// A later restart waits the back-off (300 ms before the second, then
	// 600 ms) after the instance before ended.
	if c := v.Container("crash"); c.State.StartedAt == nil || c.LastState == nil || c.LastState.FinishedAt == nil {
		t.Errorf("crash = %+v, want startedAt and the last state's finishedAt", c)
	} else if gap := c.State.StartedAt.Sub(*c.LastState.FinishedAt); gap < 300*time.Millisecond {
		t.Errorf("restarted %s after the previous instance ended, want at least the 300 ms back-off", gap)
	}

	// --previous is the instance before the current one.
	cur := v.Container("crash").RestartCount + 1 // instance numbers as the script counts them
	prev, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "crash", Previous: true})
	if errMsg != "" || !strings.HasPrefix(prev, "instance ") {
		t.Fatalf("logs --previous = %q, %s", prev, errMsg)
	}
	now, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "crash"})
	if now == prev {
		t.Errorf("logs and logs --previous both %q", now)
	}
	if want := "instance " + strconv.Itoa(int(cur)-1) + "\n"; prev != want && prev != "instance "+strconv.Itoa(int(cur))+"\n" {
		// The container may restart between the status and the request:
		// previous is then one further on.
		t.Errorf("logs --previous = %q, want %q", prev, want)
	}

	// Cancel ends the follow.
	g.Host.Send(guestchannel.TypeCancel, "", guestchannel.Cancel{Target: follow.ID})
	select {
	case <-follow.Ended():
	case <-time.After(5 * time.Second):
		t.Error("follow did not end after cancel")
	}
}

// Init containers run one at a time, in order, to completion, before the
// containers; OnFailure does not restart a container that succeeded.
func TestInitContainersInOrder(t *testing.T) {
	needGuest(t)
	init := []guestchannel.Container{
		withVolume(sh("init-1", "sleep 0.2; echo one >> /v/order")),
		withVolume(sh("init-2", "echo two >> /v/order")),
	}
	main := withVolume(sh("main", "cat /v/order; echo main >> /v/order"))
	spec := emptyDir(image.Spec("inits", "OnFailure", 1, init, []guestchannel.Container{main}))
	g := guest(t, spec, guesttest.Options{})

	v := g.Host.Wait("pod succeeded", wait, func(v guesttest.View) bool { return v.Phase == guestchannel.PhaseSucceeded })
	for _, name := range []string{"init-1", "init-2", "main"} {
		c := v.Container(name)
		if c.State.Kind != guestchannel.StateTerminated || c.State.ExitCode != 0 || c.State.Reason != "Completed" || c.RestartCount != 0 {
			t.Errorf("%s = %+v restarts %d, want completed once", name, c.State, c.RestartCount)
		}
		// As the kubelet says: a completed init container is ready, and
		// no terminated container is started.
		if wantReady := name != "main"; c.Ready != wantReady || c.Started {
			t.Errorf("%s ready %v started %v, want ready %v, not started", name, c.Ready, c.Started, wantReady)
		}
	}
	i1, i2, m := v.Container("init-1").State, v.Container("init-2").State, v.Container("main").State
	if i2.StartedAt.Before(*i1.FinishedAt) || m.StartedAt.Before(*i2.FinishedAt) {
		t.Errorf("out of order: init-1 %v–%v, init-2 %v–%v, main from %v", i1.StartedAt, i1.FinishedAt, i2.StartedAt, i2.FinishedAt, m.StartedAt)
	}
	if text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "main"}); text != "one\ntwo\n" {
		t.Errorf("main saw %q, want the init containers' lines in order", text)
	}
	// While init containers ran, the container waited for them.
	_, reports, _ := g.Host.Snapshot()
	if c := reports[0].Containers[0]; c.State.Kind != guestchannel.StateWaiting || c.State.Reason != "PodInitializing" {
		t.Errorf("main in the first report = %+v, want waiting PodInitializing", c.State)
	}
}

// A failing init container with restartPolicy Never fails the pod and its
// containers never start.
func TestInitContainerFailureFailsPod(t *testing.T) {
	needGuest(t)
	spec := image.Spec("initfail", "Never", 1, []guestchannel.Container{sh("init", "sleep 1; exit 2")}, []guestchannel.Container{sh("main", "sleep 3600")})
	g := guest(t, spec, guesttest.Options{})
	g.Host.Wait("init running", wait, running("init"))
	// A follow of main waits for its first instance, and ends when the
	// failed init container means none will come.
	follow := g.Host.Follow("main")
	v := g.Host.Wait("pod failed", wait, func(v guesttest.View) bool { return v.Phase == guestchannel.PhaseFailed })
	select {
	case <-follow.Ended():
	case <-time.After(5 * time.Second):
		t.Error("a follow of a container that will never start did not end")
	}
	if c := v.Container("init"); c.State.ExitCode != 2 {
		t.Errorf("init = %+v, want exit 2", c.State)
	}
	if c := v.Container("main"); c.State.Kind != guestchannel.StateWaiting {
		t.Errorf("main = %+v, want never started", c.State)
	}
	// What never ran has no log to read and runs no command, and says
	// so, as the kubelet does, a follow too: none will start.
	for _, follow := range []bool{false, true} {
		if text, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "main", Follow: follow}); text != "" ||
			errMsg != `container "main" never started (PodInitializing) and will not: the pod has Failed` {
			t.Errorf("logs of main (follow %v) = %q, error %q; want none and that it never started", follow, text, errMsg)
		}
	}
	for name, want := range map[string]string{
		"main": `container "main" is not running (waiting, PodInitializing)`,
		"init": `container "init" is not running (terminated with exit code 2, Error)`,
	} {
		if r := g.Host.Exec(name, nil, "true"); r.Error != want {
			t.Errorf("exec in %s = %+v, want the error %q", name, r, want)
		}
	}
}

// Stop honours the grace period: a container that traps SIGTERM ends on
// it; one that ignores it is killed once the grace period is over.
func TestStopGracePeriod(t *testing.T) {
	needGuest(t)
	polite := sh("polite", `trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.05; done`)
	stubborn := sh("stubborn", `trap '' TERM; echo ready; while true; do sleep 0.05; done`)
	spec := image.Spec("grace", "Always", 2, nil, []guestchannel.Container{polite, stubborn})
	g := guest(t, spec, guesttest.Options{})
	g.Host.Wait("both running", wait, func(v guesttest.View) bool { return running("polite")(v) && running("stubborn")(v) })
	for _, name := range []string{"polite", "stubborn"} {
		guesttest.Eventually(t, name+" trapping", wait, func() bool {
			text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: name})
			return text == "ready\n"
		})
	}

	start := time.Now()
	stopped := g.Host.Stop(1, wait)
	took := time.Since(start)
	if len(stopped.Killed) != 1 || stopped.Killed[0] != "stubborn" {
		t.Errorf("killed = %v, want only stubborn", stopped.Killed)
	}
	if took < time.Second || took > 5*time.Second {
		t.Errorf("stop took %s, want the 1 s grace period asked for (less than the pod's 2 s)", took)
	}
	v, _, _ := g.Host.Snapshot()
	if c := v.Container("polite"); c.State.Kind != guestchannel.StateTerminated || c.State.ExitCode != 0 || c.State.Signal != 0 {
		t.Errorf("polite = %+v, want exit 0 from its trap", c.State)
	}
	if c := v.Container("stubborn"); c.State.ExitCode != 137 || c.State.Signal != 9 {
		t.Errorf("stubborn = %+v, want killed (137, signal 9)", c.State)
	}
	if v.Phase != guestchannel.PhaseFailed {
		t.Errorf("phase = %s, want Failed: the stop is done and stubborn was killed", v.Phase)
	}
	if text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "polite"}); text != "ready\ngot TERM\n" {
		t.Errorf("polite's log = %q", text)
	}
	if procs := guesttest.Descendants(g.Pid()); len(procs) > 0 {
		t.Errorf("processes left in the guest: %v", procs)
	}
	if procs := guesttest.CgroupProcs(g.Cgroup); len(procs) > 0 {
		t.Errorf("processes left in the cgroups: %v", procs)
	}
	// No restart after a stop, even with Always.
	if v, _, _ := g.Host.Snapshot(); v.Container("polite").RestartCount != 0 {
		t.Errorf("restarted after stop")
	}
}

// A stop ends the phase once nothing runs and nothing will: the host
// takes it as the stop's outcome. A pod whose only container waits in
// back-off has nothing to stop and ends Failed at once (its container
// never ended well) instead of staying Stopping, which would hold its
// delete for the whole grace period; a pod whose containers all exit 0 on
// TERM ends Succeeded.
func TestStopEndsThePhase(t *testing.T) {
	needGuest(t)
	t.Run("crash-looping", func(t *testing.T) {
		spec := image.Spec("crashloop", "Always", 30, nil, []guestchannel.Container{sh("crash", "exit 1")})
		g := guest(t, spec, guesttest.Options{Backoff: time.Minute, MaxBackoff: time.Minute})
		g.Host.Wait("crash in back-off", wait, func(v guesttest.View) bool {
			return v.Container("crash").State.Reason == "CrashLoopBackOff"
		})
		if stopped := g.Host.Stop(30, wait); len(stopped.Killed) != 0 {
			t.Errorf("killed = %v, want none: nothing ran", stopped.Killed)
		}
		v, _, _ := g.Host.Snapshot()
		if v.Phase != guestchannel.PhaseFailed {
			t.Errorf("phase after the stop = %s, want Failed", v.Phase)
		}
		// Its first restart was immediate; the back-off after the second
		// end is where the stop found it.
		if c := v.Container("crash"); c.RestartCount != 1 {
			t.Errorf("crash restarted %d times, want once (at once after its first end) and not after the stop", c.RestartCount)
		}
	})
	t.Run("polite", func(t *testing.T) {
		polite := sh("polite", `trap 'exit 0' TERM; echo ready; while true; do sleep 0.05; done`)
		g := guest(t, image.Spec("polite", "Always", 30, nil, []guestchannel.Container{polite}), guesttest.Options{})
		g.Host.Wait("polite running", wait, running("polite"))
		guesttest.Eventually(t, "polite trapping", wait, func() bool {
			text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "polite"})
			return text == "ready\n"
		})
		g.Host.Stop(30, wait)
		v, _, _ := g.Host.Snapshot()
		if v.Phase != guestchannel.PhaseSucceeded {
			t.Errorf("phase after the stop = %s, want Succeeded: polite exited 0", v.Phase)
		}
	})
}

// A container allocating past its memory limit is OOM-killed and reported
// OOMKilled.
func TestOOMKilled(t *testing.T) {
	needGuest(t)
	hog := guestchannel.Container{Name: "hog", Command: []string{"tail", "/dev/zero"},
		Resources: guestchannel.Resources{MemoryLimitBytes: 16 << 20, CPULimitMilli: 500}}
	spec := image.Spec("oom", "Never", 1, nil, []guestchannel.Container{hog})
	g := guest(t, spec, guesttest.Options{})
	v := g.Host.Wait("hog terminated", wait, func(v guesttest.View) bool {
		return v.Container("hog").State.Kind == guestchannel.StateTerminated
	})
	if c := v.Container("hog").State; c.Reason != "OOMKilled" || c.ExitCode != 137 {
		t.Errorf("hog = %+v, want OOMKilled with exit code 137", c)
	}
	if v.Phase != guestchannel.PhaseFailed {
		t.Errorf("phase = %s, want Failed", v.Phase)
	}
}

// An image disk that does not mount keeps the pod Pending with a reason the
// host can show, and the agent still answers.
func TestUnmountableDiskIsReported(t *testing.T) {
	needGuest(t)
	junk := t.TempDir() + "/junk-flat.vmdk"
	if err := os.WriteFile(junk, []byte(strings.Repeat("not a filesystem ", 1000)), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := image.Spec("baddisk", "Always", 1, nil, []guestchannel.Container{sh("app", "sleep 3600")})
	g := guest(t, spec, guesttest.Options{Devices: map[string]string{"scsi0:1": junk}})
	v := g.Host.Wait("a reason", wait, func(v guesttest.View) bool { return v.Reason != "" })
	if v.Phase != guestchannel.PhasePending || v.Reason != "ContainerCreating" || !strings.Contains(v.Message, "disks[1]") {
		t.Errorf("status = %s %s %q, want Pending ContainerCreating naming disks[1]", v.Phase, v.Reason, v.Message)
	}
	if c := v.Container("app"); c.State.Kind != guestchannel.StateWaiting {
		t.Errorf("app = %+v, want waiting", c.State)
	}
	if r := g.Host.Exec("app", nil, "true"); r.Error == "" {
		t.Errorf("exec in a pod that never started: %+v, want an error", r)
	}
	if stopped := g.Host.Stop(1, wait); len(stopped.Killed) != 0 {
		t.Errorf("stopped = %+v", stopped)
	}
}

// An agent started again on the same disk 0 (the guest rebooted) goes on
// with the logs the earlier boot left: --previous reads that boot's last
// instance, which the pod's lastState names after the reboot, and the new
// boot's first instance does not overwrite it. The agent's restart count
// still starts at 0 with the boot (the record adds the earlier boots').
func TestLogsGoOnAcrossAGuestReboot(t *testing.T) {
	needGuest(t)
	// Boot 1 runs two instances: the second is its last.
	once := withVolume(sh("app", `if [ -f /v/once ]; then echo "boot 1 second"; exec sleep 3600; fi; touch /v/once; echo "boot 1 first"; exit 1`))
	spec := emptyDir(image.Spec("reboot", "Always", 0, nil, []guestchannel.Container{once}))
	g1 := guest(t, spec, guesttest.Options{Backoff: 100 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	g1.Host.Wait("app restarted once and running", wait, func(v guesttest.View) bool {
		return v.Container("app").RestartCount == 1 && running("app")(v)
	})
	guesttest.Eventually(t, "boot 1's second instance's log", wait, func() bool {
		text, _ := g1.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return text == "boot 1 second\n"
	})
	g1.Shutdown()

	spec = image.Spec("reboot", "Always", 0, nil, []guestchannel.Container{sh("app", `echo "boot 2"; exec sleep 3600`)})
	g2 := guest(t, spec, guesttest.Options{Devices: map[string]string{"scsi0:0": g1.Ephemeral}})
	v := g2.Host.Wait("app running in boot 2", wait, running("app"))
	if c := v.Container("app"); c.RestartCount != 0 || c.LastState != nil {
		t.Errorf("app in boot 2 = %+v, want no restart and no last state of the agent's own", c)
	}
	guesttest.Eventually(t, "boot 2's log", wait, func() bool {
		text, _ := g2.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return text == "boot 2\n"
	})
	if prev, errMsg := g2.Host.Logs(guestchannel.LogsRequest{Container: "app", Previous: true}); prev != "boot 1 second\n" || errMsg != "" {
		t.Errorf("logs --previous after the reboot = %q, %q; want boot 1's last instance", prev, errMsg)
	}
	if _, _, hellos := g2.Host.Snapshot(); len(hellos) == 0 || !hellos[0].Can(guestchannel.CapLogsAcrossBoots) {
		t.Errorf("hellos = %+v, want the capability %s announced", hellos, guestchannel.CapLogsAcrossBoots)
	}
}

// A container that terminated for good in an earlier boot of its pod (the
// pod VM re-created on another host: Container.Completed) is not started
// again: it is reported terminated with that very state from the first
// report on, without a restart of this boot; it runs nothing (no root, no
// log, nothing written to the volume it shares), while the other
// container runs; and the pod's phase counts it terminated: once the
// other exits, the Never pod is Failed by its exit code 3.
func TestACompletedContainerIsNotStartedAgain(t *testing.T) {
	needGuest(t)
	startedAt := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	finishedAt := startedAt.Add(3 * time.Second)
	done := guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: "Error", Message: "from the earlier boot",
		ExitCode: 3, StartedAt: &startedAt, FinishedAt: &finishedAt}
	first := withVolume(sh("first", `until [ -f /v/go ]; do sleep 0.1; done; exit 0`))
	second := withVolume(sh("second", `echo ran > /v/ran; echo second ran; exit 3`))
	second.Completed = &done
	spec := emptyDir(image.Spec("completed", "Never", 1, nil, []guestchannel.Container{first, second}))
	g := guest(t, spec, guesttest.Options{})

	g.Host.Wait("first running", wait, running("first"))
	want, _ := json.Marshal(guestchannel.ContainerStatus{Name: "second", State: done})
	_, reports, _ := g.Host.Snapshot()
	for i, r := range reports {
		for _, c := range r.Containers {
			if got, _ := json.Marshal(c); c.Name == "second" && string(got) != string(want) {
				t.Errorf("report %d: second = %s, want %s", i, got, want)
			}
		}
	}
	if len(reports) == 0 || !reports[0].Full || len(reports[0].Containers) != 2 {
		t.Fatalf("first report = %+v, want a full one with both containers", reports)
	}
	if r := g.Host.Exec("first", nil, "ls", "/v"); r.ExitCode != 0 || r.Stdout != "" {
		t.Errorf("ls /v = %+v, want an empty volume: second wrote nothing", r)
	}
	if _, err := os.Stat(g.UpperDir("second")); !os.IsNotExist(err) {
		t.Errorf("second's upper directory: %v, want none (no root was made)", err)
	}
	if text, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "second"}); text != "" || errMsg != "" {
		t.Errorf("logs second = %q, %q; want an empty log", text, errMsg)
	}
	if _, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "second", Previous: true}); errMsg != guestchannel.NoPreviousInstance {
		t.Errorf("logs --previous second: error %q, want %q", errMsg, guestchannel.NoPreviousInstance)
	}
	if r := g.Host.Exec("second", nil, "true"); r.Error == "" || !strings.Contains(r.Error, "exit code 3") {
		t.Errorf("exec in second = %+v, want an error: it is terminated with exit code 3", r)
	}

	if r := g.Host.Exec("first", nil, "touch", "/v/go"); r.ExitCode != 0 {
		t.Fatalf("touch /v/go = %+v", r)
	}
	v := g.Host.Wait("pod finished", wait, func(v guesttest.View) bool { return v.Phase == guestchannel.PhaseFailed })
	if f := v.Container("first"); f.State.Kind != guestchannel.StateTerminated || f.State.ExitCode != 0 {
		t.Errorf("first = %+v, want terminated with exit code 0", f.State)
	}
	if got, _ := json.Marshal(v.Container("second")); string(got) != string(want) {
		t.Errorf("second at the end = %s, want %s", got, want)
	}
}
