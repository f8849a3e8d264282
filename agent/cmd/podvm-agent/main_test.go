package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
	"github.com/podvisor/podvisor/agent/privtest"
)

// The agent binary and the test image, built once for the whole run.
var (
	agentBin string
	image    *guesttest.Image
	setupErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "podvm-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin, setupErr = guesttest.BuildAgent(dir)
	if setupErr == nil && os.Geteuid() == 0 {
		if _, err := exec.LookPath("mkfs.erofs"); err == nil {
			image, setupErr = guesttest.BuildImage(dir)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	// Every guest and benchmark removes its cgroups; one left in any
	// hierarchy fails the run (and is removed here).
	if left := guesttest.Leftovers(os.Getpid()); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "cgroups left by the tests: %v\n", left)
		for _, l := range left {
			if err := guesttest.RemoveCgroup(strings.TrimPrefix(l, filepath.Dir(l))); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		}
		code = 1
	}
	os.Exit(code)
}

// needGuest checks what a guest needs; every test that boots one calls it
// first.
func needGuest(t *testing.T) {
	t.Helper()
	privtest.Require(t, "the agent mounts disks, makes namespaces and cgroups")
	privtest.RequireTools(t, "runc", "mkfs.erofs", "mkfs.ext4", "busybox")
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

// guest boots a guest running spec.
func guest(t *testing.T, spec *guestchannel.PodSpec, opt guesttest.Options) *guesttest.Guest {
	t.Helper()
	return guesttest.Start(t, agentBin, image, spec, opt)
}

func sh(name, script string) guestchannel.Container {
	return guestchannel.Container{Name: name, Command: []string{"/bin/sh", "-c", script}}
}

func running(name string) func(guesttest.View) bool {
	return func(v guesttest.View) bool { return v.Container(name).State.Kind == guestchannel.StateRunning }
}

const wait = 20 * time.Second

// A pod as the acceptance tour runs it: one container that logs and writes a
// file, one that exits 3 with restartPolicy Never.
func TestContainersRunExitCodesLogsExec(t *testing.T) {
	needGuest(t)
	first := sh("first", "echo hello; echo data > /data.txt; echo to-stderr >&2; sleep 3600")
	first.Env = []guestchannel.EnvVar{{Name: "GREETING", Value: "hi there"}}
	spec := image.Spec("tour", "Never", 1, nil, []guestchannel.Container{first, sh("three", "exit 3")})
	g := guest(t, spec, guesttest.Options{})

	v := g.Host.Wait("first running, three terminated", wait, func(v guesttest.View) bool {
		return running("first")(v) && v.Container("three").State.Kind == guestchannel.StateTerminated
	})
	three := v.Container("three")
	if three.State.ExitCode != 3 || three.State.Reason != "Error" || three.RestartCount != 0 {
		t.Errorf("three = %+v, want terminated exitCode 3 reason Error, no restart", three.State)
	}
	if v.Phase != guestchannel.PhaseRunning {
		t.Errorf("phase = %s, want Running", v.Phase)
	}
	if f := v.Container("first"); !f.Ready || !f.Started || f.State.StartedAt == nil {
		t.Errorf("first = %+v, want ready, started, with startedAt", f)
	}
	_, reports, hellos := g.Host.Snapshot()
	if len(hellos) != 1 || hellos[0].PodUID != spec.UID || hellos[0].VMUUID != "vm-tour" || hellos[0].BootID == "" ||
		hellos[0].Namespace != spec.Namespace || hellos[0].Name != spec.Name || spec.Name == "" {
		t.Errorf("hellos = %+v", hellos)
	}
	if !reports[0].Full {
		t.Errorf("first report is not full: %+v", reports[0])
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].Seq <= reports[i-1].Seq || reports[i].Full {
			t.Errorf("report %d: seq %d after %d, full=%v: want increasing partial reports", i, reports[i].Seq, reports[i-1].Seq, reports[i].Full)
		}
	}

	// Logs: stdout and stderr in write order.
	guesttest.Eventually(t, "first's output", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "first"})
		return strings.Contains(text, "to-stderr")
	})
	if text, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "first"}); text != "hello\nto-stderr\n" || errMsg != "" {
		t.Errorf("logs first = %q (%s), want hello and to-stderr", text, errMsg)
	}
	if text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "first", TailLines: 1}); text != "to-stderr\n" {
		t.Errorf("logs --tail 1 = %q", text)
	}
	if _, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "first", Previous: true}); errMsg == "" {
		t.Errorf("logs --previous of a container never restarted: no error")
	}
	if _, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "nope"}); !strings.Contains(errMsg, "nope") {
		t.Errorf("logs of an unknown container: error %q", errMsg)
	}
	// Line times: each line stamped once, with a time of this run; since
	// after the lines, none; a limit cuts the output; a bad number is
	// refused, naming the field.
	if !hellos[0].Can(guestchannel.CapLogsTimestamps) {
		t.Errorf("hello %+v does not announce %s", hellos[0], guestchannel.CapLogsTimestamps)
	}
	text, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "first", Timestamps: true})
	lines := strings.SplitAfter(text, "\n")
	for i, want := range []string{"hello\n", "to-stderr\n", ""} {
		ts, rest, _ := strings.Cut(lines[min(i, len(lines)-1)], " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if len(lines) != 3 || want != "" && (err != nil || rest != want || time.Since(at) > time.Hour || time.Since(at) < 0) {
			t.Fatalf("logs --timestamps = %q (%s), want hello and to-stderr, each after its time", text, errMsg)
		}
	}
	later := time.Now().Add(time.Minute)
	if text, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "first", SinceTime: &later}); text != "" || errMsg != "" {
		t.Errorf("logs --since-time after the lines = %q (%s), want nothing", text, errMsg)
	}
	if text, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "first", LimitBytes: 8}); text != "hello\nto" || errMsg != "" {
		t.Errorf("logs --limit-bytes 8 = %q (%s), want %q", text, errMsg, "hello\nto")
	}
	if _, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "first", LimitBytes: -1}); !strings.Contains(errMsg, "limitBytes") {
		t.Errorf("logs with limitBytes -1: error %q, want one naming limitBytes", errMsg)
	}

	// Exec: output, exit code, stdin, the container's env, hostname and image.
	for _, tc := range []struct {
		name   string
		stdin  []byte
		cmd    []string
		stdout string
		stderr string
		code   int32
	}{
		{"file written by the container", nil, []string{"cat", "/data.txt"}, "data\n", "", 0},
		{"exit code and stderr", nil, []string{"sh", "-c", "echo oops >&2; exit 7"}, "", "oops\n", 7},
		{"stdin", []byte("piped input\n"), []string{"cat"}, "piped input\n", "", 0},
		{"environment", nil, []string{"sh", "-c", "echo $GREETING"}, "hi there\n", "", 0},
		{"hostname is the pod's", nil, []string{"hostname"}, "tour\n", "", 0},
		{"both layers", nil, []string{"cat", "/etc/base.txt", "/etc/top.txt"}, "base\ntop\n", "", 0},
		{"whiteout hides the base's file", nil, []string{"sh", "-c", "test -e /etc/removed || echo gone"}, "gone\n", "", 0},
		{"a program's own 255", nil, []string{"sh", "-c", "exit 255"}, "", "", 255},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := g.Host.Exec("first", tc.stdin, tc.cmd...)
			if r.Stdout != tc.stdout || r.Stderr != tc.stderr || r.ExitCode != tc.code || r.Error != "" {
				t.Errorf("exec %q = %+v, want stdout %q stderr %q exit %d", tc.cmd, r, tc.stdout, tc.stderr, tc.code)
			}
		})
	}
	// A command that cannot start exits as in a shell, kubectl or docker:
	// 127 not found, 126 not executable (the runtimes exit 255), with a
	// shell's message on stderr instead of the runtime's.
	for _, tc := range []struct {
		cmd    []string
		code   int32
		stderr string
	}{
		{[]string{"no-such-program"}, 127, "no-such-program: executable file not found in $PATH\n"},
		{[]string{"/no/such/program"}, 127, "/no/such/program: no such file or directory\n"},
		{[]string{"/data.txt", "x"}, 126, "/data.txt: permission denied\n"},
		{[]string{"/etc"}, 126, "/etc: permission denied\n"},
	} {
		if r := g.Host.Exec("first", nil, tc.cmd...); r.ExitCode != tc.code || r.Stderr != tc.stderr || r.Error != "" {
			t.Errorf("exec %q = %+v, want exit %d and stderr %q", tc.cmd, r, tc.code, tc.stderr)
		}
	}
	// A program the lookup cannot see from outside (on the container's
	// own /dev tmpfs) runs, its stderr and its own 255 untouched.
	if r := g.Host.Exec("first", nil, "sh", "-c", `printf '#!/bin/sh\necho out; echo err >&2; exit 255\n' > /dev/own; chmod +x /dev/own`); r.ExitCode != 0 {
		t.Fatalf("write /dev/own: %+v", r)
	}
	if r := g.Host.Exec("first", nil, "/dev/own"); r.Stdout != "out\n" || r.Stderr != "err\n" || r.ExitCode != 255 || r.Error != "" {
		t.Errorf("exec /dev/own = %+v, want its own output and exit 255", r)
	}
	if r := g.Host.Exec("three", nil, "true"); !strings.Contains(r.Error, "not running") {
		t.Errorf("exec in a terminated container: %+v, want a not-running error", r)
	}
	// An exec cancelled (the user's Ctrl-C) ends its command and what the
	// command started: a shell's background sleep does not outlive it in
	// the container.
	id, answers := g.Host.Request(guestchannel.TypeExec, guestchannel.ExecRequest{Container: "first",
		Command: []string{"sh", "-c", "sleep 3141 & echo started; wait"}})
	if !execAnswers(answers, 20*time.Second, func(env guestchannel.Envelope) bool {
		var o guestchannel.ExecOutput
		return env.Type == guestchannel.TypeExecOutput && env.Decode(&o) == nil && strings.Contains(string(o.Data), "started")
	}) {
		t.Fatal("the cancelled exec's command did not start")
	}
	g.Host.Send(guestchannel.TypeCancel, "", guestchannel.Cancel{Target: id})
	if !execAnswers(answers, 20*time.Second, func(env guestchannel.Envelope) bool { return env.Type == guestchannel.TypeExecExit }) {
		t.Fatal("the cancelled exec did not end")
	}
	if pids := processesRunning("sleep\x003141"); len(pids) > 0 {
		t.Errorf("the cancelled exec's background sleep still runs (pids %v)", pids)
	}

	// The container's write is in its upper directory on disk 0; the image
	// disks did not change.
	b, err := os.ReadFile(g.UpperDir("first") + "/data.txt")
	if err != nil || string(b) != "data\n" {
		t.Errorf("upper dir on disk 0: data.txt = %q, %v", b, err)
	}
	image.Unchanged(t)

	// The state directory (mount points, bundles, the runtime's state) is
	// the guest's own tmpfs, as a real guest's /run is: nothing the agent
	// and the runtime make there lands on the host's filesystem.
	var st, host unix.Statfs_t
	if err := unix.Statfs(g.Path(g.StateDir), &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("the guest's state directory: filesystem %#x (%v), want a tmpfs", st.Type, err)
	}
	if err := unix.Statfs(g.StateDir, &host); err == nil && host.Type != unix.TMPFS_MAGIC {
		// On a disk, the agent mounted a tmpfs of its own over it.
		if entries, err := os.ReadDir(g.StateDir); err != nil || len(entries) > 0 {
			t.Errorf("the host's copy of the state directory holds %d entries (%v), want none", len(entries), err)
		}
	}

	// Stop: nothing of the pod is left.
	stopped := g.Host.Stop(1, wait)
	if len(stopped.Killed) != 1 || stopped.Killed[0] != "first" {
		t.Errorf("stopped = %+v, want first killed (sh as PID 1 ignores SIGTERM)", stopped)
	}
	v, _, _ = g.Host.Snapshot()
	if f := v.Container("first"); f.State.Kind != guestchannel.StateTerminated || f.State.Signal != 9 {
		t.Errorf("first after stop = %+v, want terminated by SIGKILL", f.State)
	}
	if procs := guesttest.Descendants(g.Pid()); len(procs) > 0 {
		t.Errorf("processes left in the guest after stop: %v", procs)
	}
	if procs := guesttest.CgroupProcs(g.Cgroup); len(procs) > 0 {
		t.Errorf("processes left in the pod's cgroups after stop: %v", procs)
	}
	if dirs := guesttest.CgroupDirs(g.Cgroup); len(dirs) > 0 {
		t.Errorf("container cgroups left after stop: %v", dirs)
	}
	if errs := g.Host.Errors(); len(errs) > 0 {
		t.Errorf("protocol errors: %v", errs)
	}
}

// A pod whose network is there at boot has its containers run in one step
// (`run`): nothing is awaited that a create made ahead could overlap (the
// ahead path, for a spec that waits for its network, is
// TestNetworkPendingStartsOnTheUpdate). A pod with init containers never
// has containers made ahead.
func TestContainersRunInOneStepWhenNothingIsAwaited(t *testing.T) {
	needGuest(t)
	spec := image.Spec("ahead", "Never", 1, nil, []guestchannel.Container{sh("app", "echo up; sleep 3600")})
	g := guest(t, spec, guesttest.Options{})
	g.Host.Wait("app running", wait, running("app"))
	log := g.Log()
	network := logLine(log, `msg="boot phase" phase=network`)
	started := logLine(log, `msg="container started"`, "container=app")
	if network < 0 || started < network || logLine(log, `msg="container created"`) >= 0 || strings.Contains(strings.Split(log, "\n")[started], "created_ahead=true") {
		t.Fatalf("want the network, then app run in one step (no create ahead); agent log:\n%s", log)
	}
	if r := g.Host.Exec("app", nil, "hostname"); r.Stdout != "ahead\n" {
		t.Errorf("hostname in the container = %+v, want the pod's", r)
	}
	guesttest.Eventually(t, "app's output", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return text == "up\n"
	})

	withInit := image.Spec("ahead-init", "Never", 1, []guestchannel.Container{sh("init", "true")}, []guestchannel.Container{sh("app", "sleep 3600")})
	g2 := guest(t, withInit, guesttest.Options{})
	g2.Host.Wait("app running after init", wait, running("app"))
	if log := g2.Log(); strings.Contains(log, `msg="container created"`) {
		t.Errorf("a pod with init containers had containers created ahead; agent log:\n%s", log)
	}
}

// logLine is the number of the first line of log holding every one of
// parts, -1 for none.
func logLine(log string, parts ...string) int {
	for i, l := range strings.Split(log, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return i
		}
	}
	return -1
}

// A spec that waits for its network (an instant clone made before the
// pod's network was attached): the containers are created and not started
// until the hypervisor's update brings the spec with the network; an
// update of another pod changes nothing; the DNS configuration it brings is
// what the container created before it reads. Stopped while waiting, the
// pod leaves nothing behind.
func TestNetworkPendingStartsOnTheUpdate(t *testing.T) {
	needGuest(t)
	spec := image.Spec("early", "Never", 1, nil, []guestchannel.Container{sh("app", "cat /etc/resolv.conf; sleep 3600")})
	spec.NetworkPending = true
	g := guest(t, spec, guesttest.Options{Updates: true})
	guesttest.Eventually(t, "app created", wait, func() bool {
		return logLine(g.Log(), `msg="container created"`, "container=app") >= 0 &&
			logLine(g.Log(), `msg="waiting for the pod's network"`) >= 0
	})
	other := *spec
	other.UID, other.NetworkPending = "someone-else", false
	g.Update(&other)
	guesttest.Eventually(t, "the other pod's update ignored", wait, func() bool {
		return logLine(g.Log(), `msg="spec update of another pod ignored"`) >= 0
	})
	if v, _, _ := g.Host.Snapshot(); v.Container("app").State.Kind == guestchannel.StateRunning || v.Phase == guestchannel.PhaseRunning {
		t.Fatalf("app runs before its network came: %+v", v)
	}
	attached := *spec
	attached.NetworkPending = false
	attached.DNS = &guestchannel.DNSConfig{Nameservers: []string{"10.0.0.53"}, Searches: []string{"default.svc.cluster.local"}}
	g.Update(&attached)
	g.Host.Wait("app running", wait, running("app"))
	guesttest.Eventually(t, "app's resolv.conf", wait, func() bool {
		text, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "app"})
		return strings.Contains(text, "nameserver 10.0.0.53")
	})
	log := g.Log()
	if network, started := logLine(log, `msg="network attached"`), logLine(log, `msg="container started"`, "created_ahead=true"); network < 0 || started < network {
		t.Errorf("want the network, then app started from its create; agent log:\n%s", log)
	}

	waiting := image.Spec("early-stop", "Never", 1, nil, []guestchannel.Container{sh("app", "sleep 3600")})
	waiting.NetworkPending = true
	g2 := guest(t, waiting, guesttest.Options{Updates: true})
	guesttest.Eventually(t, "app created", wait, func() bool {
		return logLine(g2.Log(), `msg="waiting for the pod's network"`) >= 0
	})
	g2.Host.Stop(1, wait)
	if procs := guesttest.CgroupProcs(g2.Cgroup); len(procs) > 0 {
		t.Errorf("processes left in the pod's cgroups after a stop while waiting: %v", procs)
	}
	if v, _, _ := g2.Host.Snapshot(); v.Container("app").State.Kind == guestchannel.StateRunning {
		t.Errorf("app ran though stopped before its network: %+v", v.Container("app"))
	}
}

// execAnswers reads an exec's answers until one satisfies ok, for at most
// timeout; false when none did.
func execAnswers(answers <-chan guestchannel.Envelope, timeout time.Duration, ok func(guestchannel.Envelope) bool) bool {
	deadline := time.After(timeout)
	for {
		select {
		case env, open := <-answers:
			if !open {
				return false
			}
			if ok(env) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// processesRunning lists the processes of this machine (guests' included:
// their pid namespaces are below this one) whose command line is cmdline
// (its arguments separated by NUL), zombies left out.
func processesRunning(cmdline string) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || strings.TrimRight(string(b), "\x00") != cmdline {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := strings.LastIndexByte(string(st), ')'); i >= 0 && strings.HasPrefix(string(st[i+1:]), " Z") {
				continue
			}
		}
		out = append(out, e.Name())
	}
	return out
}
