// Command podvm-image builds the pod VM boot image (make podvm-image): the
// kernel and modules of the machine's linux-image-amd64, an initramfs with
// the first stage, the agent and the OCI runtime, a bootable VMDK and its
// OVF. See package build.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/podvisor/podvisor/agent/filehash"
	"github.com/podvisor/podvisor/podvm/build"
)

func main() {
	var c build.Config
	out := flag.String("out", "bin/podvm", "output directory")
	flag.StringVar(&c.KernelRelease, "kernel-release", "", "kernel version under /boot and /lib/modules (default: the newest)")
	flag.StringVar(&c.Init, "init", "", "podvm-init binary (default: built from source)")
	flag.StringVar(&c.Agent, "agent", "", "agent binary (default: built from source)")
	flag.StringVar(&c.Runtime, "runtime", "", "OCI runtime (default /usr/sbin/runc)")
	flag.Parse()
	if err := run(c, *out); err != nil {
		fmt.Fprintln(os.Stderr, "podvm-image:", err)
		os.Exit(1)
	}
}

func run(c build.Config, out string) error {
	if c.Init == "" || c.Agent == "" {
		tmp, err := os.MkdirTemp("", "podvm-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		init, agent, err := build.GoBinaries(tmp)
		if err != nil {
			return err
		}
		if c.Init == "" {
			c.Init = init
		}
		if c.Agent == "" {
			c.Agent = agent
		}
	}
	r, err := build.Build(c, out)
	if err != nil {
		return err
	}
	for _, p := range []string{r.Kernel, r.Initramfs, r.Flat, r.VMDK, r.OVF, r.OVA} {
		sum, err := filehash.SHA256(p)
		if err != nil {
			return err
		}
		st, _ := os.Stat(p)
		fmt.Printf("%s  %10d  %s\n", sum[:16], st.Size(), filepath.Clean(p))
	}
	return nil
}
