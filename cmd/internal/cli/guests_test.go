package cli

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/syncbuf"
	"github.com/vmware/govmomi/object"
)

func TestMain(m *testing.M) {
	code := m.Run()
	simtest.RemoveBinaries()
	os.Exit(code)
}

// TestPodVMGuestServesLogsAndExec runs the real pod VM agent in a simulated
// guest and reaches it as a user does: power on a pod VM, the host agent
// reports its container running, `podvisor logs` and `podvisor exec` go
// through NATS and the guest channel, a delete stops the containers, and
// power-off leaves no process behind.
func TestPodVMGuestServesLogsAndExec(t *testing.T) {
	g := startGuestSim(t)
	ctx, b, host := context.Background(), g.bus, g.host
	guesttest.StartHostAgent(t, b, host.Name, g.channels)

	// The pod record, as the provisioner keeps it.
	const uid = "0b9f6a4e-guest-test"
	grace := int64(5)
	rec := events.PodRecord{UID: uid, Namespace: "default", Name: "web", Host: host.Name, VMName: "pv-" + uid, Phase: events.PodPhaseRunning}
	rec.Pod.Spec.TerminationGracePeriodSeconds = &grace
	rec.Pod.Spec.Containers = []corev1.Container{{Name: "first", Image: "busybox"}, {Name: "second", Image: "busybox"}}
	putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", "web"), rec)

	chain := "sha256:" + strings.Repeat("b", 64)
	poweredOn := time.Now()
	vm, info := g.runPodVM(t, simtest.PodVM{
		Name: "pv-" + uid,
		Spec: simtest.BusyboxSpec(uid, "web", chain, grace,
			guestchannel.Container{Name: "first", Command: []string{"sh", "-c", "echo hello; echo data > /data.txt; sleep 3600"}},
			guestchannel.Container{Name: "second", Command: []string{"sh", "-c", "exit 3"}},
		),
	})

	// The CLI finds NATS through the state dir, as after `podvisor up`.
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "env"), []byte("export PODVISOR_NATS_URL='"+b.Conn().ConnectedUrl()+"'\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The host agent reports what really runs: first running, second
	// terminated with exit code 3.
	eventuallyWithin(t, 60*time.Second, "first running and second exited 3", func() bool {
		r := lastReport(t, b, uid)
		return r != nil && len(r.ContainerStatuses) == 2 && r.ContainerStatuses[0].State.Running != nil &&
			r.ContainerStatuses[1].State.Terminated != nil && r.ContainerStatuses[1].State.Terminated.ExitCode == 3
	})
	t.Logf("power-on to both containers reported: %s", time.Since(poweredOn).Round(time.Millisecond))
	eventuallyWithin(t, 10*time.Second, "podvisor logs web -c first", func() bool {
		out, _, code := run(t, state, "", "logs", "web", "-c", "first")
		return code == 0 && out == "hello\n"
	})
	// --tail 0: the agent starts the log at its end: none of it so far,
	// and with -f only what is written from then on.
	if out, errOut, code := run(t, state, "", "logs", "web", "-c", "first", "--tail", "0"); code != 0 || out != "" {
		t.Errorf("logs --tail 0: exit %d, stdout %q, stderr %q; want nothing", code, out, errOut)
	}
	follow, stopFollow := followLogs(t, state, "web", "-c", "first", "--tail", "0")
	eventuallyWithin(t, 20*time.Second, "a line written to the container's output reaches logs -f --tail 0", func() bool {
		run(t, state, "", "exec", "web", "-c", "first", "--", "sh", "-c", "echo later > /proc/1/fd/1")
		return strings.Contains(follow.String(), "later\n")
	})
	stopFollow()
	if got := follow.String(); strings.Contains(got, "hello") {
		t.Errorf("logs -f --tail 0 printed the log written before it: %q", got)
	}
	if out, errOut, code := run(t, state, "", "exec", "web", "-c", "first", "--", "cat", "/data.txt"); code != 0 || out != "data\n" {
		t.Errorf("exec cat /data.txt: exit %d, stdout %q, stderr %q; want data", code, out, errOut)
	}
	if _, errOut, code := run(t, state, "", "exec", "web", "-c", "first", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exec sh -c 'exit 7': exit %d (%s), want 7", code, errOut)
	}
	if out, errOut, code := run(t, state, "piped\n", "exec", "-i", "web", "-c", "first", "--", "cat"); code != 0 || out != "piped\n" {
		t.Errorf("exec -i cat: exit %d, stdout %q, stderr %q; want the input back", code, out, errOut)
	}
	// kubectl's exec -it habit: no terminal, and it says so, as kubectl
	// does when its input is not one; the command runs all the same.
	if out, errOut, code := run(t, state, "piped\n", "exec", "-it", "web", "-c", "first", "--", "cat"); code != 0 || out != "piped\n" ||
		!strings.HasPrefix(errOut, "Unable to use a TTY") {
		t.Errorf("exec -it cat: exit %d, stdout %q, stderr %q; want the input back and a note that there is no TTY", code, out, errOut)
	}
	// What cannot be answered says why, naming the pod and the container,
	// as kubectl does: a command for a container that has terminated, the
	// log of an instance before the only one.
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"exec", "web", "-c", "second", "--", "true"},
			`error: pod default/web: container "second" is not running (terminated with exit code 3, Error)`},
		{[]string{"logs", "web", "-c", "first", "--previous"},
			`error: previous terminated container "first" in pod default/web not found`},
	} {
		if out, errOut, code := run(t, state, "", tc.args...); code != 1 || out != "" || strings.TrimSpace(errOut) != tc.wantErr {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and %q", tc.args, code, out, errOut, tc.wantErr)
		}
	}
	// Input of any size streams at the pace the command reads it: 8 MiB
	// (eight times what the guest would queue for a command that does not
	// read) into a command that starts reading a second late arrive
	// whole, the CLI held by the stdin window meanwhile.
	input := make([]byte, 8<<20)
	_, _ = cryptorand.Read(input)
	started := time.Now()
	if out, errOut, code := run(t, state, string(input), "exec", "-i", "web", "-c", "first", "--", "sh", "-c", "sleep 1; sha256sum"); code != 0 ||
		out != fmt.Sprintf("%x  -\n", sha256.Sum256(input)) {
		t.Errorf("exec -i of 8 MiB into sh -c 'sleep 1; sha256sum': exit %d, stdout %q, stderr %q; want the input's digest", code, out, errOut)
	} else {
		t.Logf("8 MiB through exec -i into a command reading a second late: %s", time.Since(started).Round(time.Millisecond))
	}

	// Interrupted (Ctrl-C) while its command runs, an exec ends at once
	// with the shell's code for SIGINT and says so, no error of its own.
	var out, errb syncbuf.Buffer
	interrupt, stopExec := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Main(interrupt, []string{"--state-dir", state, "exec", "web", "-c", "first", "--", "sh", "-c", "echo started; sleep 30"},
			strings.NewReader(""), &out, &errb)
	}()
	eventually(t, "the exec's command to start", func() bool { return strings.Contains(out.String(), "started") })
	stopExec()
	if code := <-done; code != 130 || strings.TrimSpace(errb.String()) != "interrupted" {
		t.Errorf("exec interrupted: exit %d, stderr %q; want 130 and \"interrupted\"", code, errb.String())
	}

	// Delete: the host agent stops the containers within the grace period.
	ev, err := bus.NewEvent("podvisor/cli", events.TypePodDeleteRequested, "default/web", &events.PodDeleteRequested{Namespace: "default", Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	eventuallyWithin(t, 20*time.Second, "first terminated after the delete", func() bool {
		r := lastReport(t, b, uid)
		return r != nil && r.ContainerStatuses[0].State.Terminated != nil
	})
	// sh, PID 1 of its container, ignores SIGTERM: it ends when the grace
	// period runs out, not before.
	if took := time.Since(deleted); took < time.Duration(grace)*time.Second {
		t.Errorf("first terminated %s after the delete, before its grace period of %ds", took, grace)
	} else {
		t.Logf("delete to first terminated (grace %ds): %s", grace, took.Round(time.Millisecond))
	}
	// The stop is done: the guest's phase is final (Failed: first was
	// killed, second exited 3), what lets the provisioner power the VM
	// off at once rather than at the end of the grace period.
	eventuallyWithin(t, 10*time.Second, "the guest's phase final after the stop", func() bool {
		r := lastReport(t, b, uid)
		return r != nil && r.Phase == events.GuestPhaseFailed
	})

	// Power-off leaves no process of the guest.
	procs, _ := os.ReadFile(filepath.Join(info.CgroupDirs["memory"], "cgroup.procs"))
	poweringOff := time.Now()
	task, err := vm.PowerOff(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power off: %v", err)
	}
	t.Logf("power-off task, guest gone: %s", time.Since(poweringOff).Round(time.Millisecond))
	for _, p := range strings.Fields(string(procs)) {
		if _, err := os.Stat("/proc/" + p); err == nil {
			t.Errorf("process %s of the guest survived the power-off", p)
		}
	}
	if _, err := os.Stat(info.CgroupDirs["memory"]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the VM's cgroup survived the power-off (%v)", err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(info.PID)); err == nil {
		t.Errorf("the agent (pid %d) survived the power-off", info.PID)
	}
}

// guestSim is a simulated datacenter of one host whose powered-on pod VMs
// run the real pod VM agent, beside a bus: for tests that drive guests
// without the services.
type guestSim struct {
	bus      *bus.Bus
	dc       *sim.Datacenter
	host     sim.HostSpec
	channels string // the host agents' sockets
	image    string // a busybox image disk's filesystem (sh, echo, sleep, cat)
}

func startGuestSim(t *testing.T) *guestSim {
	t.Helper()
	agent := simtest.GuestAgent(t, "simulated guests run in namespaces and cgroups")
	g := &guestSim{image: simtest.BusyboxImage(t, []string{"sh", "echo", "sleep", "cat"}, nil), bus: bustest.Start(t)}
	// Short: guest channels are unix sockets below it.
	base, err := os.MkdirTemp("", "pvg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	g.channels = filepath.Join(base, "ch")
	g.dc = simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Dir: base, GuestsRequired: true,
		Guests: &guest.Config{Agent: agent, ChannelDir: g.channels, Dir: filepath.Join(base, "g"), StopGrace: 5 * time.Second}})
	g.host = g.dc.Hosts()[0]
	return g
}

// runPodVM creates the pod VM p on the host, its second disk holding the
// image's filesystem as the image cache writes it, powers it on
// and returns it with its guest; the guest's console is logged if the test
// fails.
func (g *guestSim) runPodVM(t *testing.T, p simtest.PodVM) (*object.VirtualMachine, guest.Info) {
	t.Helper()
	ctx := context.Background()
	p.Host, p.NumCPUs, p.MemoryMB = g.host, 1, 512
	p.Disks = []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: 128 << 20}, {File: "image.vmdk", CapacityBytes: 16 << 20, ReadOnly: true}}
	vm, extents := simtest.CreatePodVM(t, simtest.Client(t, g.dc), g.dc, p)
	img, err := os.ReadFile(g.image)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extents[1], img, 0o600); err != nil {
		t.Fatal(err)
	}
	task, err := vm.PowerOn(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	info, ok := g.dc.Guests().Guest(vm.Reference().Value)
	if !ok {
		t.Fatal("the pod VM runs no guest")
	}
	t.Cleanup(func() {
		if t.Failed() {
			console, _ := os.ReadFile(filepath.Join(info.Dir, "console.log"))
			t.Logf("guest console:\n%s", console)
		}
	})
	return vm, info
}

func eventuallyWithin(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastReport is the newest pod.containers.reported of a pod in the stream
// (walked back from its end: other pods report on the same subject).
func lastReport(t *testing.T, b *bus.Bus, uid string) *events.PodContainersReported {
	t.Helper()
	ctx := context.Background()
	stream, err := b.JetStream().Stream(ctx, events.StreamPods)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.LastSeq; seq >= info.State.FirstSeq && seq > 0; seq-- {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil || m.Subject != events.SubjectPodContainersReported {
			continue
		}
		ev, err := bus.DecodeHeaders(m.Header, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		var r events.PodContainersReported
		if err := json.Unmarshal(ev.Data(), &r); err == nil && r.UID == uid {
			return &r
		}
	}
	return nil
}

func TestUpGuestModes(t *testing.T) {
	privtest.Require(t, "simulated guests run in namespaces and cgroups")
	start := func(t *testing.T, mode, agent string) (*allinone.System, error) {
		t.Helper()
		dir, err := os.MkdirTemp("", "pvup-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		ctx, cancel := context.WithCancel(context.Background())
		sys, err := allinone.Start(ctx, allinone.Config{StateDir: dir, Clusters: 1, HostsPerCluster: 2, Seed: 1, Guests: mode, Agent: agent})
		if err != nil {
			cancel()
			return nil, err
		}
		t.Cleanup(func() { cancel(); sys.Close() })
		return sys, nil
	}
	missing := filepath.Join(t.TempDir(), "no-agent-here")

	t.Run("auto without the agent is off, said loudly", func(t *testing.T) {
		sys, err := start(t, allinone.GuestsAuto, missing)
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		sys.PrintEndpoints(&out, "env", time.Second)
		if !strings.Contains(sys.GuestsOff, "no-agent-here") || !strings.Contains(out.String(), "GUESTS ARE OFF") {
			t.Errorf("GuestsOff %q, banner:\n%s\nwant off, naming the missing agent, in capitals", sys.GuestsOff, out.String())
		}
		if strings.Contains(out.String(), "host agents:") || sys.Endpoints.HostAgents != 0 {
			t.Errorf("banner with guests off claims host agents (%d):\n%s", sys.Endpoints.HostAgents, out.String())
		}
	})
	t.Run("on without the agent fails", func(t *testing.T) {
		if _, err := start(t, allinone.GuestsOn, missing); err == nil || !strings.Contains(err.Error(), "no-agent-here") {
			t.Errorf("up --guests=on with no agent = %v, want an error naming it", err)
		}
	})
	t.Run("on runs a host agent per host", func(t *testing.T) {
		privtest.RequireTools(t, "runc")
		agent, err := simtest.AgentBinary()
		if err != nil {
			t.Fatalf("build podvm-agent: %v", err)
		}
		sys, err := start(t, allinone.GuestsOn, agent)
		if err != nil {
			t.Fatal(err)
		}
		if sys.GuestsOff != "" || sys.Datacenter.Guests() == nil {
			t.Fatalf("guests off: %s", sys.GuestsOff)
		}
		for _, h := range sys.Datacenter.Hosts() {
			sock := guest.HostSocket(sys.ChannelDir(), h.Name)
			eventuallyWithin(t, 10*time.Second, "host agent socket "+sock, func() bool {
				fi, err := os.Stat(sock)
				return err == nil && fi.Mode()&os.ModeSocket != 0
			})
		}
		// The banner and the env file say how many run and where guests
		// reach them.
		var out strings.Builder
		sys.PrintEndpoints(&out, "env", time.Second)
		if want := "host agents: 2, one per host; guest channel socket (sockets in " + sys.ChannelDir() + ")"; !strings.Contains(out.String(), want) {
			t.Errorf("banner:\n%s\nwant %q", out.String(), want)
		}
		env := sys.Endpoints.EnvFile()
		for _, want := range []string{"export PODVISOR_HOST_AGENTS='2'", "export PODVISOR_GUEST_CHANNEL='socket'", "export PODVISOR_HOST_AGENTS_LISTEN='" + sys.ChannelDir() + "'"} {
			if !strings.Contains(env, want+"\n") {
				t.Errorf("env file lacks %s:\n%s", want, env)
			}
		}
	})
}

// TestHostLossDoesNotRunACompletedContainerAgain: a Running pod with
// restartPolicy Never whose container second has exited 3 moves when its
// host is lost (`podvisor sim host fail`), and only first comes up again
// on the other host: second is not run again in the new pod VM, as the
// kubelet does not when it re-creates a pod's sandbox. It stays terminated
// with the same state (exit code 3, its startedAt and finishedAt) and no
// restart, and the pod is Running with Ready False naming it, as before
// the move.
func TestHostLossDoesNotRunACompletedContainerAgain(t *testing.T) {
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: 2})
	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag
	mustRun(t, dir, `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "steps"},
 "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
  {"name": "first", "image": "`+image+`", "command": ["sh", "-c", "sleep 3600"]},
  {"name": "second", "image": "`+image+`", "command": ["sh", "-c", "echo step done; exit 3"]}]}}`, "apply", "-f", "-")
	status := func(p corev1.Pod, name string) corev1.ContainerStatus {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == name {
				return cs
			}
		}
		return corev1.ContainerStatus{}
	}
	// podWhen polls `podvisor get pod steps -o json` until cond holds.
	podWhen := func(what string, within time.Duration, cond func(corev1.Pod) bool) corev1.Pod {
		t.Helper()
		var p corev1.Pod
		eventuallyWithin(t, within, what, func() bool {
			out, _, code := run(t, dir, "", "get", "pod", "steps", "-o", "json")
			p = corev1.Pod{}
			return code == 0 && json.Unmarshal([]byte(out), &p) == nil && cond(p)
		})
		return p
	}
	before := podWhen("first running and second terminated", 90*time.Second, func(p corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning && p.Spec.NodeName != "" &&
			status(p, "first").State.Running != nil && status(p, "second").State.Terminated != nil
	})
	done := status(before, "second")
	if term := done.State.Terminated; term.ExitCode != 3 || done.RestartCount != 0 {
		t.Fatalf("second before the move = %+v, want terminated with exit code 3, no restart", done)
	}

	host := before.Spec.NodeName
	if out, errOut, code := run(t, dir, "", "sim", "host", "fail", host); code != 0 {
		t.Fatalf("sim host fail: exit %d: %s%s", code, out, errOut)
	}
	t.Cleanup(func() { run(t, dir, "", "sim", "host", "recover", host) })
	after := podWhen("first running again on another host", 120*time.Second, func(p corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning && p.Spec.NodeName != "" && p.Spec.NodeName != host &&
			status(p, "first").State.Running != nil && status(p, "first").RestartCount == 1
	})
	if got := status(after, "second"); got.RestartCount != 0 || got.Ready || got.State.Terminated == nil ||
		!got.State.Terminated.StartedAt.Equal(&done.State.Terminated.StartedAt) ||
		!got.State.Terminated.FinishedAt.Equal(&done.State.Terminated.FinishedAt) ||
		got.State.Terminated.ExitCode != 3 || got.State.Terminated.Reason != done.State.Terminated.Reason {
		t.Errorf("second after the move = %+v; want it not run again: %+v", got, done)
	}
	ready := false
	for _, c := range after.Status.Conditions {
		if c.Type == corev1.PodReady {
			ready = c.Status == corev1.ConditionTrue || !strings.Contains(c.Message, "second")
		}
	}
	if ready {
		t.Errorf("conditions after the move = %+v, want Ready False naming second", after.Status.Conditions)
	}
}
