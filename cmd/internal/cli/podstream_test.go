package cli

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// TestLogsAndExecThroughTheHostAgent runs `podvisor logs` and `podvisor
// exec` as a user would, through NATS to a host agent and over the guest
// channel to a (scripted) pod VM agent.
func TestLogsAndExecThroughTheHostAgent(t *testing.T) {
	dir, b, host, svc := upWithHostAgent(t)
	ctx := context.Background()
	put := func(name, uid, host string, containers ...string) {
		rec := events.PodRecord{UID: uid, Namespace: "default", Name: name, Host: host, Phase: events.PodPhaseRunning}
		for _, c := range containers {
			rec.Pod.Spec.Containers = append(rec.Pod.Spec.Containers, corev1.Container{Name: c, Image: "img"})
		}
		putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", name), rec)
	}
	put("web", "uid-web", host, "first", "second")
	put("away", "uid-away", "esx-9-99", "app")
	for name, phase := range map[string]string{"waiting": events.PodPhasePending, "failed": events.PodPhaseFailed} {
		putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", name), events.PodRecord{UID: "uid-" + name, Namespace: "default", Name: name, Phase: phase})
	}

	g := guesttest.Dial(t, svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b1"}, "first", "second")
	g.SetLog("first", "hello\n")
	g.SetExec(func(req guestchannel.ExecRequest, stdin []byte) (string, int32) {
		switch strings.Join(req.Command, " ") {
		case "cat /data.txt":
			return "data\n", 0
		case "cat":
			return string(stdin), 0
		case "sh -c exit 3":
			return "", 3
		}
		return "", 127
	})
	// The agent is connected once its first report is out.
	eventually(t, "the guest's channel", func() bool {
		out, _, code := run(t, dir, "", "logs", "web", "-c", "first")
		return code == 0 && out == "hello\n"
	})

	runCases(t, dir, []cliCase{
		{"logs of a container", "", []string{"logs", "web", "-c", "first"}, "hello\n", "", 0},
		{"logs needs -c with several containers", "", []string{"logs", "web"}, "", "first, second", 1},
		{"logs of an unknown container", "", []string{"logs", "web", "-c", "third"}, "", `no container "third"`, 1},
		{"logs of a missing pod", "", []string{"logs", "nope"}, "", "not found", 1},
		{"logs of a pod whose host has no agent", "", []string{"logs", "away"}, "", "esx-9-99", 1},
		{"logs of a pod not placed yet", "", []string{"logs", "waiting"}, "", "pod default/waiting is not on a host yet (phase Pending)", 1},
		{"logs of a pod that ended unplaced", "", []string{"logs", "failed"}, "", "pod default/failed is not on a host (phase Failed)", 1},
		{"exec on a pod that ended unplaced", "", []string{"exec", "failed", "--", "true"}, "", "pod default/failed is not on a host (phase Failed)", 1},
		{"exec prints the output", "", []string{"exec", "web", "-c", "first", "--", "cat", "/data.txt"}, "data\n", "", 0},
		{"exec passes the exit code through", "", []string{"exec", "web", "-c", "first", "--", "sh", "-c", "exit 3"}, "", "code 3", 3},
		{"exec -i streams stdin", "piped\nlines\n", []string{"exec", "-i", "web", "-c", "first", "--", "cat"}, "piped\nlines\n", "", 0},
		{"exec without a command", "", []string{"exec", "web"}, "", "", 2},
		{"exec without --", "", []string{"exec", "web", "cat"}, "", "--", 2},
	})

	t.Run("logs -f follows until interrupted", func(t *testing.T) {
		out, interrupt := followLogs(t, dir, "web", "-c", "first")
		eventually(t, "the followed log", func() bool { return out.String() == "hello\n" })
		interrupt()
	})
}

// upWithHostAgent runs `up` without services and a host agent on its first
// host; b (admin) writes pod records, as the provisioner would.
func upWithHostAgent(t *testing.T) (dir string, b *bus.Bus, host string, svc *hostagent.Service) {
	t.Helper()
	sys, dir := upForTest(t, "none")
	b, err := sys.Dial(context.Background(), bus.IdentityAdmin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	host = sys.Datacenter.Hosts()[0].Name
	channels, err := os.MkdirTemp("", "pvcli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(channels) })
	return dir, b, host, guesttest.StartHostAgent(t, b, host, channels)
}

// cliCase is one run of the CLI and what it should print and exit with.
type cliCase struct {
	name     string
	stdin    string
	args     []string
	wantOut  string
	wantErr  string
	wantCode int
}

func runCases(t *testing.T, dir string, cases []cliCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, dir, tc.stdin, tc.args...)
			if code != tc.wantCode || out != tc.wantOut || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("podvisor %s: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr containing %q",
					strings.Join(tc.args, " "), code, out, errOut, tc.wantCode, tc.wantOut, tc.wantErr)
			}
		})
	}
}

// followLogs starts `podvisor logs -f args...` and returns its stdout and
// interrupt, which checks that it still runs, ends it as Ctrl-C does and
// checks that it exits 0.
func followLogs(t *testing.T, dir string, args ...string) (*syncbuf.Buffer, func()) {
	t.Helper()
	t.Setenv("PODVISOR_NATS_URL", "")
	var out, errb syncbuf.Buffer
	ctx, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	exited := make(chan int, 1)
	go func() {
		exited <- Main(ctx, append([]string{"--state-dir", dir, "logs", "-f"}, args...), strings.NewReader(""), &out, &errb)
	}()
	return &out, func() {
		t.Helper()
		select {
		case code := <-exited:
			t.Fatalf("logs -f exited (%d) before it was interrupted: %s", code, errb.String())
		default:
		}
		stop()
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("logs -f interrupted: exit %d (%s), want 0", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("logs -f did not end when interrupted")
		}
	}
}

// TestLogsAndExecAsKubectl runs `podvisor logs` and `podvisor exec` where
// kubectl would just work: a pod whose name has a dot, a pod with init
// containers and one app container (or a default-container annotation), and
// --tail 0.
func TestLogsAndExecAsKubectl(t *testing.T) {
	dir, b, host, svc := upWithHostAgent(t)
	ctx := context.Background()
	guests := map[string]*guesttest.Guest{}
	put := func(name string, annotations map[string]string, caps, inits []string, containers ...string) {
		rec := events.PodRecord{UID: "uid-" + name, Namespace: "default", Name: name, Host: host, Phase: events.PodPhaseRunning}
		rec.Pod.Annotations = annotations
		for _, c := range inits {
			rec.Pod.Spec.InitContainers = append(rec.Pod.Spec.InitContainers, corev1.Container{Name: c, Image: "img"})
		}
		for _, c := range containers {
			rec.Pod.Spec.Containers = append(rec.Pod.Spec.Containers, corev1.Container{Name: c, Image: "img"})
		}
		putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", name), rec)
		g := guesttest.Dial(t, svc.Socket(), guestchannel.Hello{PodUID: rec.UID, Namespace: "default", Name: name, BootID: "b1",
			Capabilities: caps}, append(inits, containers...)...)
		for _, c := range append(inits, containers...) {
			g.SetLog(c, c+" one\n"+c+" two\n")
		}
		g.SetExec(func(req guestchannel.ExecRequest, _ []byte) (string, int32) {
			return name + "/" + req.Container + "\n", 0
		})
		guests[name] = g
		// The agent is connected once its first report is out.
		eventually(t, name+"'s channel", func() bool {
			_, _, code := run(t, dir, "", "logs", name, "-c", containers[0])
			return code == 0
		})
	}
	put("web.v1", nil, nil, nil, "app")
	put("inits", nil, nil, []string{"init-fail"}, "main")
	put("annotated", map[string]string{"kubectl.kubernetes.io/default-container": "second"}, nil, nil, "first", "second")
	put("several", nil, nil, []string{"setup"}, "first", "second")
	put("current", nil, []string{guestchannel.CapLogsFromEnd}, nil, "app")

	runCases(t, dir, []cliCase{
		{"logs of a dotted name", "", []string{"logs", "web.v1"}, "app one\napp two\n", "", 0},
		{"exec in a dotted name", "", []string{"exec", "web.v1", "--", "hostname"}, "web.v1/app\n", "", 0},
		{"logs of a bad name", "", []string{"logs", "web.>"}, "", "RFC 1123 subdomain", 2},
		{"logs of a bad namespace", "", []string{"logs", "-n", "team.a", "web"}, "", "namespace", 2},
		{"logs skip init containers", "", []string{"logs", "inits"}, "main one\nmain two\n", "", 0},
		{"logs of an init container", "", []string{"logs", "inits", "-c", "init-fail"}, "init-fail one\ninit-fail two\n", "", 0},
		{"exec skips init containers", "", []string{"exec", "inits", "--", "hostname"}, "inits/main\n", "", 0},
		{"logs follow the default-container annotation", "", []string{"logs", "annotated"}, "second one\nsecond two\n", "", 0},
		{"exec follows the default-container annotation", "", []string{"exec", "annotated", "--", "hostname"}, "annotated/second\n", "", 0},
		{"logs need -c with several app containers", "", []string{"logs", "several"}, "", "setup, first, second): name one with -c", 1},
		{"logs --tail 0 prints nothing", "", []string{"logs", "web.v1", "--tail", "0"}, "", "", 0},
		{"logs --tail 0 of a current agent prints nothing", "", []string{"logs", "current", "--tail", "0"}, "", "", 0},
		{"logs --tail 1", "", []string{"logs", "web.v1", "--tail", "1"}, "app two\n", "", 0},
		{"logs --tail -1 prints all", "", []string{"logs", "web.v1", "--tail", "-1"}, "app one\napp two\n", "", 0},
		{"logs --tail 0 of a missing pod", "", []string{"logs", "nope", "--tail", "0"}, "", "not found", 1},
	})

	// Only the lines written once the follow is on at the pod's agent:
	// from the end there, or for an agent that predates it from its last
	// line, which the host agent leaves out.
	for _, pod := range []string{"current", "web.v1"} {
		t.Run("logs -f --tail 0 prints only new lines of "+pod, func(t *testing.T) {
			g := guests[pod]
			asked := len(g.LogsRequests())
			out, interrupt := followLogs(t, dir, "--tail", "0", pod)
			eventually(t, "the follow at the pod's agent", func() bool {
				reqs := g.LogsRequests()
				return len(reqs) > asked && reqs[len(reqs)-1].Follow
			})
			g.AppendLog("app", "app new\n")
			eventually(t, "the new line", func() bool { return out.String() == "app new\n" })
			interrupt()
			if got := out.String(); got != "app new\n" {
				t.Errorf("logs -f --tail 0 printed %q, want only the new line", got)
			}
		})
	}
}
