package hostagent_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/podstream"
)

// A guest that stops reading its channel (an agent whose channel loop is
// stuck) does not hold the host agent: a write it does not take within
// WriteTimeout closes its channel, and the exec feeding it input ends with
// an error instead of waiting for good.
func TestAGuestThatDoesNotReadItsChannelHasItClosed(t *testing.T) {
	e := newEnv(t, func(c *hostagent.Config) { c.WriteTimeout = 300 * time.Millisecond })
	e.putPod("web", "uid-web", host, 30, "app")
	g := guesttest.Dial(t, e.svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b"}, "app")
	e.waitReports("uid-web", 1)
	release := g.HoldReads()
	t.Cleanup(release)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	// More input than the connection's buffers hold: the host's writes
	// stop being taken.
	stdin := bytes.NewReader(make([]byte, 8<<20))
	req := events.PodExecRequest{Namespace: "default", Name: "web", Container: "app", Command: []string{"cat"}, Stdin: true}
	_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodExec(host), req, stdin, io.Discard, io.Discard)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("exec to a guest that does not read its channel: %v (context: %v); want it ended by the channel's end", err, ctx.Err())
	}
	release()
	select {
	case <-g.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("the channel of the guest that did not read stayed open")
	}
}
