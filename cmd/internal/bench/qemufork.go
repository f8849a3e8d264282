package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/podvm/build"
	"github.com/podvisor/podvisor/podvm/qemu"
)

// QEMUFork is the real boot image under QEMU (TCG, 1 vCPU, 512 MiB),
// booted against forked: for each pair, a template booted from power-on
// until its container is reported running over its serial channel, then a
// child forked from it as VMFork forks (podvm/qemu, Machine.Fork: the
// template frozen, its RAM a shared file the child maps copy-on-write,
// only the devices' state saved) until the child's agent has taken the VM
// over and reports the pod's container running. On the simulated
// datacenter a created pod VM's boot is a process start, so there a fork
// saves little (Fork); here the boot is a kernel's.
type QEMUFork struct {
	// Skipped says why the section did not run (it needs root, QEMU, the
	// boot image's tools and the source tree to build the image from).
	Skipped string `json:"skipped,omitempty"`
	Pairs   int    `json:"pairs"`
	// QEMU is the emulator's version line.
	QEMU string `json:"qemu,omitempty"`
	// Boot is each template's power-on → container running; Fork each
	// child's fork → container running, of which SaveRestore is QEMU's
	// part (the template stopped, its disk copied, the devices' state saved,
	// the child started, loaded and continued); the rest is the child's
	// agent taking the VM over and running the pod's container.
	Boot        Latency `json:"boot_ms"`
	Fork        Latency `json:"fork_ms"`
	SaveRestore Latency `json:"save_restore_ms"`
	// Ratio is Boot.P50 / Fork.P50 (the target: ≥ 3).
	Ratio float64 `json:"ratio"`
}

// Timeouts of a pair's steps under TCG on a loaded machine (a boot to
// running took 11 s idle, up to 31 s at a load of 9 on 2 cores).
const (
	qemuBootTimeout = 5 * time.Minute
	qemuForkTimeout = 2 * time.Minute
)

// runQEMUFork builds the boot image from the source tree once, then
// measures cfg.QEMUPairs pairs one after the other, each on disks of its
// own.
func runQEMUFork(ctx context.Context, cfg Config, p progress) (*QEMUFork, error) {
	out := &QEMUFork{Pairs: cfg.QEMUPairs}
	if out.Skipped = qemuForkReady(ctx); out.Skipped != "" {
		return out, nil
	}
	if v, err := exec.CommandContext(ctx, "qemu-system-x86_64", "--version").Output(); err == nil {
		out.QEMU, _, _ = strings.Cut(strings.TrimSpace(string(v)), "\n")
	}
	dir := filepath.Join(cfg.StateDir, "qemu")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p.say("qemu fork: building the boot image from the source tree…")
	boot, err := qemu.BuildBootImage(dir)
	if err != nil {
		return nil, err
	}
	image := filepath.Join(dir, "layer-flat.vmdk")
	if err := qemu.MakeImageDisk(image, filepath.Join(dir, "layer")); err != nil {
		return nil, err
	}
	base := qemu.Disks{Boot: boot, Image: image}
	p.say("qemu fork: %s of a template booted and its child forked, one at a time (%s, TCG)…", count(cfg.QEMUPairs, "pair", "pairs"), out.QEMU)
	var booted, forked, saveRestore latencies
	for i := range cfg.QEMUPairs {
		pr, err := runQEMUPair(ctx, base, filepath.Join(dir, fmt.Sprintf("pair-%d", i)), i)
		if err != nil {
			return nil, fmt.Errorf("pair %d: %w", i, err)
		}
		booted.add(ms(pr.boot))
		forked.add(ms(pr.fork))
		saveRestore.add(ms(pr.saveRestore))
		p.say("qemu fork: pair %d: boot → running %.1f s, fork → running %.1f s (QEMU's save and restore %.2f s, state %d KiB)",
			i, pr.boot.Seconds(), pr.fork.Seconds(), pr.saveRestore.Seconds(), pr.stateBytes>>10)
	}
	out.Boot, out.Fork, out.SaveRestore = booted.latency(), forked.latency(), saveRestore.latency()
	out.Ratio = qemuRatio(out.Boot, out.Fork)
	p.say("qemu fork: boot p50 %.1f s, fork p50 %.1f s: %.1f×", out.Boot.P50/1000, out.Fork.P50/1000, out.Ratio)
	return out, nil
}

// qemuRatio is boot's p50 over fork's (0 when fork measured nothing).
func qemuRatio(boot, fork Latency) float64 {
	if fork.P50 <= 0 {
		return 0
	}
	return boot.P50 / fork.P50
}

// qemuForkReady says why the section cannot run here, or "".
func qemuForkReady(ctx context.Context) string {
	if os.Geteuid() != 0 {
		return "needs root (run as root, or --qemu-pairs 0)"
	}
	if missing := qemu.Missing(); missing != "" {
		return "needs QEMU and the boot image's tools: " + missing +
			" (apt-get install qemu-system-x86 seabios erofs-utils mtools syslinux runc busybox-static)"
	}
	if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
		return "needs a kernel for the boot image: no /boot/vmlinuz-* (apt-get install linux-image-amd64)"
	}
	if _, err := exec.LookPath("go"); err != nil {
		return "the boot image is built from the source tree: needs the go command"
	}
	// The image's agent and first stage are built from this tree, as make
	// podvm-image builds them: the bench must run in its workspace.
	list := exec.CommandContext(ctx, "go", "list", build.AgentPackage, build.InitPackage)
	var stderr bytes.Buffer
	list.Stderr = &stderr
	if err := list.Run(); err != nil {
		return fmt.Sprintf("the boot image is built from the source tree: run from the repository (go list %s: %v: %s)",
			build.AgentPackage, err, strings.TrimSpace(stderr.String()))
	}
	return ""
}

// qemuPair is one pair's figures.
type qemuPair struct {
	boot, fork, saveRestore time.Duration
	stateBytes              int64
}

// runQEMUPair boots a template as cmd/internal/cli's
// TestBootImageForkedChildTakesOverTheTemplate does (a template's spec,
// its container a shell that sleeps, a vmxnet3 card, its channel a
// network serial port) and forks a child from it (a pod's spec with the
// child's card's address), each measured until its Line reports the
// container running.
func runQEMUPair(ctx context.Context, base qemu.Disks, dir string, i int) (qemuPair, error) {
	var pr qemuPair
	tmplLine, err := qemu.Listen()
	if err != nil {
		return pr, err
	}
	defer tmplLine.Close()
	childLine, err := qemu.Listen()
	if err != nil {
		return pr, err
	}
	defer childLine.Close()

	tmplName := fmt.Sprintf("pv-template-bench-%d", i)
	tmpl := qemu.PodSpec(tmplName, events.TemplateNamespace, tmplName, "echo template; exec sleep 3600")
	tmpl.Template = true
	info, err := qemu.Guestinfo(tmpl, fmt.Sprintf("42-template-%d", i))
	if err != nil {
		return pr, err
	}
	disks, err := base.For(filepath.Join(dir, "template"), info)
	if err != nil {
		return pr, err
	}
	booted := time.Now()
	parent, err := qemu.Boot(ctx, filepath.Join(dir, "template"), disks, append(tmplLine.Port(), qemu.Card("00:50:56:00:00:01")...)...)
	if err != nil {
		return pr, err
	}
	defer parent.Close()
	running, err := waitRunning(ctx, qemuBootTimeout, tmplLine, parent, tmpl.UID)
	if err != nil {
		return pr, fmt.Errorf("the template: %w%s", err, consoleTail(parent))
	}
	pr.boot = running.Sub(booted)

	uid := fmt.Sprintf("5e1c9b0d-bench-forked-%d", i)
	pod := qemu.PodSpec(uid, Namespace, "forked", "read h < /proc/sys/kernel/hostname; echo forked on $h; exec sleep 3600")
	// The child's card has an address of its own (vSphere gives an instant
	// clone's cards new ones); the agent configures it by that address.
	pod.NICs = []guestchannel.NIC{{Network: "pods", MAC: "00:50:56:00:00:02", IP: "10.244.7.5", Prefix: 24}}
	if info, err = qemu.Guestinfo(pod, fmt.Sprintf("42-forked-%d", i)); err != nil {
		return pr, err
	}
	childDir := filepath.Join(dir, "child")
	if err := os.MkdirAll(childDir, 0o755); err != nil {
		return pr, err
	}
	start := time.Now()
	child, err := parent.Fork(ctx, childDir, info, append(childLine.Port(), qemu.Card("00:50:56:00:00:02")...)...)
	if err != nil {
		return pr, err
	}
	pr.saveRestore = time.Since(start)
	pr.stateBytes = child.Forked.StateBytes
	// The child first: the parent's Close removes the RAM's file.
	defer child.Close()
	running, err = waitRunning(ctx, qemuForkTimeout, childLine, child, uid)
	if err != nil {
		return pr, fmt.Errorf("the child: %w%s", err, consoleTail(child))
	}
	pr.fork = running.Sub(start)
	return pr, nil
}

// errQEMUExited ends a wait for a machine's pod when its QEMU is gone.
var errQEMUExited = errors.New("QEMU exited")

// waitRunning waits, for at most timeout, until l reports pod uid's
// container main running, and fails as soon as m's QEMU exits: a QEMU that
// dies at once (a bad argument, no room for its RAM) would otherwise be
// waited on for the whole timeout.
func waitRunning(ctx context.Context, timeout time.Duration, l *qemu.Line, m *qemu.Machine, uid string) (time.Time, error) {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	go func() {
		select {
		case err := <-m.Exited:
			if err == nil {
				stop(errQEMUExited)
			} else {
				stop(fmt.Errorf("%w: %w", errQEMUExited, err))
			}
		case <-ctx.Done():
		}
	}()
	running, err := l.WaitRunning(ctx, uid, "main")
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errQEMUExited) {
			return running, fmt.Errorf("%w (%w)", err, cause)
		}
	}
	return running, err
}

// consoleTail is the last lines of a machine's console and QEMU's output,
// for an error.
func consoleTail(m *qemu.Machine) string {
	b, _ := os.ReadFile(m.Console)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(0, len(lines)-20):]
	s := "\nconsole (last lines):\n" + strings.Join(lines, "\n")
	if out := strings.TrimSpace(m.Output()); out != "" {
		s += "\nqemu: " + out
	}
	return s
}
