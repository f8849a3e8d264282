// Package servetest plays the far end of a connection in tests: a TLS
// server, a host agent's socket, a vCenter that never answers. Each such
// test needs the same accept loop that ends when the listener closes;
// this is that loop, once.
//
// It imports nothing of the tree, so that the tests of any package
// (pki, vsphere, sim) can use it without an import cycle.
package servetest

import (
	"net"
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

// FreePort returns a loopback port nothing listens on (the kernel's choice,
// released at once), for a server started after its client.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
