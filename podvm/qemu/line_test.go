package qemu

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// openLine is a line that asks again for a hello after
// helloTimeout, closed when the test ends.
func openLine(t *testing.T, helloTimeout time.Duration) *Line {
	t.Helper()
	l, err := listen(helloTimeout)
	must(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// agentSide dials the line as QEMU's serial port does and plays the
// agent's part on it.
func agentSide(t *testing.T, l *Line) (*guestchannel.Conn, net.Conn) {
	t.Helper()
	args := l.Port()
	if len(args) != 4 || args[0] != "-chardev" || !strings.Contains(args[1], "server=off,reconnect=1") || args[3] != "chardev:channel" {
		t.Fatalf("Port() = %q, want a client chardev reconnecting, as the second serial port", args)
	}
	port := strings.Split(strings.Split(args[1], "port=")[1], ",")[0]
	c, err := net.Dial("tcp", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return guestchannel.NewConn(c), c
}

func expectResync(t *testing.T, conn *guestchannel.Conn) {
	t.Helper()
	env, err := conn.Receive()
	if err != nil || env.Type != guestchannel.TypeResync {
		t.Fatalf("line sent %s (%v), want a resync asking for a hello", env.Type, err)
	}
}

func status(name, kind string) guestchannel.Status {
	st := guestchannel.Status{Phase: guestchannel.PhasePending, Containers: []guestchannel.ContainerStatus{{Name: name, State: guestchannel.ContainerState{Kind: kind}}}}
	if kind == guestchannel.StateRunning {
		st.Phase = guestchannel.PhaseRunning
	}
	return st
}

// A pod's container is running once its status says so after the pod's
// hello on the same connection: a template's hello and running container
// on an earlier connection (a VM its child took over) do not count, nor
// does the garbage a serial line carries.
func TestLineWaitsForThePodsContainerRunning(t *testing.T) {
	l := openLine(t, helloTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	tmpl, _ := agentSide(t, l)
	expectResync(t, tmpl)
	must(t, tmpl.Send(guestchannel.TypeHello, "", guestchannel.Hello{PodUID: "template"}))
	must(t, tmpl.Send(guestchannel.TypeStatus, "", status("main", guestchannel.StateRunning)))

	child, raw := agentSide(t, l)
	expectResync(t, child)
	// A status before any hello on this connection: the rest of an
	// earlier session.
	must(t, child.Send(guestchannel.TypeStatus, "", status("main", guestchannel.StateRunning)))
	if _, err := raw.Write([]byte("\x00garbage from the console\n")); err != nil {
		t.Fatal(err)
	}
	must(t, child.Send(guestchannel.TypeHello, "", guestchannel.Hello{PodUID: "pod"}))
	must(t, child.Send(guestchannel.TypeStatus, "", status("main", guestchannel.StateWaiting)))
	must(t, child.Send(guestchannel.TypeStatus, "", status("sidecar", guestchannel.StateRunning)))
	before := time.Now()
	must(t, child.Send(guestchannel.TypeStatus, "", status("main", guestchannel.StateRunning)))
	at, err := l.WaitRunning(ctx, "pod", "main")
	if err != nil {
		t.Fatal(err)
	}
	if at.Before(before) {
		t.Errorf("running at %v, before its report was sent (%v): an earlier report counted", at, before)
	}
}

// A line silent after its resync asks again (the agent was not there yet
// to read it); a container that ends before it ran, and a pod the agent
// cannot go on with, fail the wait at once; a wait with nothing coming
// ends with its context.
func TestLineAsksAgainAndFails(t *testing.T) {
	l := openLine(t, 50*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, _ := agentSide(t, l)
	expectResync(t, conn)
	expectResync(t, conn)
	must(t, conn.Send(guestchannel.TypeHello, "", guestchannel.Hello{PodUID: "pod"}))
	ended := status("main", guestchannel.StateTerminated)
	ended.Containers[0].State.ExitCode = 3
	must(t, conn.Send(guestchannel.TypeStatus, "", ended))
	if _, err := l.WaitRunning(ctx, "pod", "main"); err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Errorf("WaitRunning after the container ended: %v, want an error with its exit code", err)
	}
	must(t, conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Phase: guestchannel.PhasePending, Reason: "DiskError", Message: "scsi0:1 does not mount"}))
	if _, err := l.WaitRunning(ctx, "pod", "main"); err == nil || !strings.Contains(err.Error(), "does not mount") {
		t.Errorf("WaitRunning after a reason: %v, want it", err)
	}
	short, stop := context.WithTimeout(ctx, 100*time.Millisecond)
	defer stop()
	if _, err := l.WaitRunning(short, "pod", "main"); err == nil || !strings.Contains(err.Error(), "not reported running") {
		t.Errorf("WaitRunning with nothing coming: %v, want it to end with its context", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
