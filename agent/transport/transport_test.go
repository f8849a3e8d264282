package transport

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/privtest"
)

func TestDialUnixCarriesFrames(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "channel.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan guestchannel.Envelope, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		env, _ := guestchannel.NewConn(c).Receive()
		got <- env
		c.Close()
	}()
	rw, err := Dial(context.Background(), "unix:"+sock)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if err := guestchannel.NewConn(rw).Send(guestchannel.TypeHello, "", guestchannel.Hello{PodUID: "u1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case env := <-got:
		var h guestchannel.Hello
		if err := env.Decode(&h); err != nil || h.PodUID != "u1" {
			t.Fatalf("host received %+v (%v)", env, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("host received nothing")
	}
}

// A pseudo-terminal stands in for the serial port: a terminal left in its
// default (cooked) mode would echo, turn "\n" into "\r\n" and hold bytes
// until a newline; in raw mode they pass as written.
func TestSerialIsRaw(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		if privtest.Required() {
			t.Fatalf("no pseudo-terminals here: %v", err)
		}
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	port, err := Dial(context.Background(), "serial:/dev/pts/"+itoa(n))
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()

	// Host → guest: control characters and newlines arrive untouched.
	in := []byte("a\r\nb\x03\x04c\n")
	if _, err := master.Write(in); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(in))
	if _, err := io.ReadFull(port, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, in) {
		t.Fatalf("guest read %q, host wrote %q", buf, in)
	}
	// Guest → host: no "\r" added, nothing echoed back to the host.
	out := []byte("{\"v\":1}\n")
	if _, err := port.Write(out); err != nil {
		t.Fatal(err)
	}
	buf = make([]byte, len(out))
	if _, err := io.ReadFull(master, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, out) {
		t.Fatalf("host read %q, guest wrote %q", buf, out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestDialRefusesBadAddresses(t *testing.T) {
	for addr, want := range map[string]string{
		"tcp:1.2.3.4:5":    "not unix, vsock or serial",
		"unix:":            "socket path",
		"vsock:2":          "<cid>:<port>",
		"vsock:x:1":        "vsock cid",
		"vsock:2:port":     "vsock port",
		"serial:ttyS1":     "device path",
		"serial:/nonexist": "no such file",
	} {
		_, err := Dial(context.Background(), addr)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Dial(%q) = %v, want an error mentioning %q", addr, err, want)
		}
	}
}
