package vsphere

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/podvisor/podvisor/shared/servetest"
)

// TestCallTimeout: a vCenter that accepts connections and never answers
// fails the call after CallTimeout instead of hanging it.
func TestCallTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	servetest.Accept(t, ln, func(c net.Conn) {
		t.Cleanup(func() { c.Close() }) // hold it open, answer nothing
	})
	start := time.Now()
	_, err = Connect(context.Background(), Config{URL: "http://u:p@" + ln.Addr().String() + "/sdk", CallTimeout: 300 * time.Millisecond})
	if err == nil {
		t.Fatal("connected to a vCenter that never answers")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the call took %s, want about the 300ms CallTimeout", took)
	}
}
