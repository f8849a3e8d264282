// Package servetest plays the far end of a connection in tests: a TLS
// server, a host agent's socket, a vCenter that never answers. Each such
// test needs the same accept loop that ends when the listener closes;
// this is that loop, once.
//
// It imports nothing of the tree, so that the tests of any package
// (pki, vsphere, sim) can use it without an import cycle.
package servetest

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Accept hands every connection ln accepts to handle until ln is closed,
// one connection after the other on the one goroutine that accepts them
// (not the test's); it closes ln when the test ends. A handle that must not
// hold up the next connection starts its own goroutine.
func Accept(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			handle(c)
		}
	}()
}

// FreePort returns a loopback port nothing listens on, for a server started
// after its client or started again on the same port.
//
// The port is taken below the kernel's ephemeral range: a port the kernel
// hands out for ":0" is also one it may give an outgoing connection the next
// moment, and a server that restarts on it (or a second FreePort call, which
// the kernel may answer with the same port) then finds it in use. Outside
// the range only another listener can take it.
func FreePort(t testing.TB) int {
	t.Helper()
	lo := ephemeralLow()
	for range 100 {
		port := 10000 + rand.IntN(lo-10000)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken: try another
		}
		ln.Close()
		return port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 10100 {
				lo = n
			}
		}
	}
	return lo
}
