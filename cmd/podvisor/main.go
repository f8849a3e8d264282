// Command podvisor is the podvisor CLI: it starts the all-in-one datacenter
// (`podvisor up`), runs one service (`podvisor serve NAME`) and drives a
// running system by publishing events (`apply`, `delete`, …) and reading its
// records (`get`, `events`).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/podvisor/podvisor/cmd/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
