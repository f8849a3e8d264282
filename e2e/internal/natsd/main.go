// Command natsd is a NATS JetStream server with file storage for the crash
// test: unlike the server embedded in `podvisor up`, it can be stopped and
// started again on the same port and directory while the simulated
// datacenter (which lives in the up process and is not persisted) goes on.
//
//	natsd -addr 127.0.0.1:4222 -dir /tmp/js
//
// It stops on SIGINT or SIGTERM after flushing the store.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:4222", "host:port to listen on")
	dir := flag.String("dir", "", "JetStream store directory (required)")
	flag.Parse()
	if err := run(*addr, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "natsd:", err)
		os.Exit(1)
	}
}

func run(addr, dir string) error {
	if dir == "" {
		return fmt.Errorf("-dir is required: JetStream needs a store directory")
	}
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return fmt.Errorf("-addr %q: port: %w", addr, err)
	}
	srv, err := server.NewServer(&server.Options{
		Host:      host,
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		// The test kills its clients, not this server; a graceful stop
		// flushes, so the default sync interval keeps what was acked.
		NoSigs: true,
	})
	if err != nil {
		return err
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		return fmt.Errorf("not ready within 30s")
	}
	fmt.Println("natsd ready on", srv.ClientURL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.Shutdown()
	srv.WaitForShutdown()
	return nil
}
