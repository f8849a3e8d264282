// Command standinagent is a minimal pod VM agent the boot image carries
// until the real agent (agent/cmd/podvm-agent) is built into it. It reads
// the same BootConfig, does the same disk work for one pass (formats and
// mounts the ephemeral disk, mounts the image disks read-only as erofs,
// stacks each container's root as an overlay), runs the containers once,
// in order, with the OCI runtime, and speaks the guest channel: Hello, full
// Status, a Status per change, and the logs of a container on request. It
// does not restart containers, probe, exec or stop: the boot test needs
// none of that, and the real agent does it all.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/transport"
)

func main() {
	cfgPath := flag.String("boot-config", "", "the boot configuration (JSON)")
	flag.Parse()
	if err := run(*cfgPath); err != nil {
		fmt.Fprintf(os.Stderr, "standinagent: %v\n", err)
	}
	// PID 1 must not exit: stay until the VM is powered off.
	for {
		time.Sleep(time.Hour)
	}
}

type agent struct {
	bc   guestchannel.BootConfig
	spec *guestchannel.PodSpec
	conn *guestchannel.Conn

	mu     sync.Mutex
	seq    uint64
	states []guestchannel.ContainerStatus
	phase  string
}

func run(cfgPath string) error {
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	a := &agent{phase: guestchannel.PhasePending}
	if err := json.Unmarshal(b, &a.bc); err != nil {
		return fmt.Errorf("boot config: %w", err)
	}
	if a.spec, err = guestchannel.UnmarshalSpec(a.bc.Spec); err != nil {
		return err
	}
	for _, c := range a.spec.Containers {
		a.states = append(a.states, guestchannel.ContainerStatus{Name: c.Name,
			State: guestchannel.ContainerState{Kind: guestchannel.StateWaiting, Reason: "ContainerCreating"}})
	}
	rw, err := transport.Dial(context.Background(), a.bc.Channel)
	if err != nil {
		return err
	}
	a.conn = guestchannel.NewConn(rw)
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err := a.conn.Send(guestchannel.TypeHello, "", guestchannel.Hello{Protocol: guestchannel.Protocol,
		AgentVersion: "standin", PodUID: a.spec.UID, VMUUID: a.bc.VMUUID, BootID: strings.TrimSpace(string(boot))}); err != nil {
		return err
	}
	a.report(true)
	go a.serve()

	layers, err := a.mountDisks()
	if err != nil {
		a.fail("DiskError", err)
		return err
	}
	for i, c := range a.spec.Containers {
		if err := a.runContainer(i, c, layers); err != nil {
			a.fail("RunContainerError", err)
			return err
		}
	}
	a.mu.Lock()
	a.phase = guestchannel.PhaseSucceeded
	for _, s := range a.states {
		if s.State.ExitCode != 0 {
			a.phase = guestchannel.PhaseFailed
		}
	}
	a.mu.Unlock()
	a.report(false)
	return nil
}

func (a *agent) fail(reason string, err error) {
	a.mu.Lock()
	a.phase = guestchannel.PhaseFailed
	a.mu.Unlock()
	a.seq++
	_ = a.conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Full: true, Seq: a.seq, Phase: guestchannel.PhaseFailed,
		Reason: reason, Message: err.Error(), Containers: a.states})
}

func (a *agent) report(full bool) {
	a.mu.Lock()
	a.seq++
	st := guestchannel.Status{Full: full, Seq: a.seq, Phase: a.phase, Containers: append([]guestchannel.ContainerStatus(nil), a.states...)}
	a.mu.Unlock()
	if err := a.conn.Send(guestchannel.TypeStatus, "", st); err != nil {
		fmt.Fprintf(os.Stderr, "standinagent: status: %v\n", err)
	}
}

// serve answers the host's requests: logs; anything else gets an error.
func (a *agent) serve() {
	for {
		env, err := a.conn.Receive()
		if err != nil {
			return
		}
		switch env.Type {
		case guestchannel.TypeLogs:
			var req guestchannel.LogsRequest
			if err := env.Decode(&req); err != nil {
				_ = a.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{EOF: true, Error: err.Error()})
				continue
			}
			b, err := os.ReadFile(a.logPath(req.Container))
			if err != nil {
				_ = a.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{EOF: true, Error: err.Error()})
				continue
			}
			for len(b) > guestchannel.ChunkSize {
				_ = a.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{Data: b[:guestchannel.ChunkSize]})
				b = b[guestchannel.ChunkSize:]
			}
			_ = a.conn.Send(guestchannel.TypeLogChunk, env.ID, guestchannel.LogChunk{Data: b, EOF: true})
		default:
			_ = a.conn.Send(guestchannel.TypeError, env.ID, guestchannel.Error{Message: env.Type + " is not served by this agent"})
		}
	}
}

func (a *agent) ephemeral() string { return filepath.Join(a.bc.StateDir, "ephemeral") }

func (a *agent) logPath(container string) string {
	return filepath.Join(a.ephemeral(), "logs", container+".log")
}

// mountDisks formats the ephemeral disk when it holds no ext4 yet, mounts
// it, and mounts every image disk read-only; it returns chainID → mount.
func (a *agent) mountDisks() (map[string]string, error) {
	layers := map[string]string{}
	for _, d := range a.spec.Disks {
		dev := a.bc.Devices[d.Unit]
		if dev == "" {
			return nil, fmt.Errorf("disk %s: no device in the boot configuration", d.Unit)
		}
		switch d.Role {
		case guestchannel.DiskEphemeral:
			if !hasExt4(dev) {
				if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", dev).CombinedOutput(); err != nil {
					return nil, fmt.Errorf("format %s: %w: %s", dev, err, out)
				}
			}
			if err := mount(dev, a.ephemeral(), "ext4", 0); err != nil {
				return nil, err
			}
		case guestchannel.DiskImage:
			dir := filepath.Join(a.bc.StateDir, "layers", strings.ReplaceAll(d.ChainID, ":", "-"))
			if err := mount(dev, dir, "erofs", unix.MS_RDONLY); err != nil {
				return nil, err
			}
			layers[d.ChainID] = dir
		}
	}
	return layers, nil
}

func hasExt4(dev string) bool {
	f, err := os.Open(dev)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 2)
	_, err = f.ReadAt(magic, 1024+0x38)
	return err == nil && magic[0] == 0x53 && magic[1] == 0xef
}

func mount(dev, dir, fstype string, flags uintptr) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, dir, fstype, flags, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dev, fstype, dir, err)
	}
	return nil
}

func (a *agent) runContainer(i int, c guestchannel.Container, layers map[string]string) error {
	var lower []string
	for _, id := range c.Chain {
		lower = append(lower, layers[id])
	}
	base := filepath.Join(a.ephemeral(), "containers", c.Name)
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	bundle := filepath.Join(a.bc.StateDir, "bundles", c.Name)
	root := filepath.Join(bundle, "rootfs")
	for _, d := range []string{upper, work, root, filepath.Dir(a.logPath(c.Name))} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("container %s: overlay root: %w", c.Name, err)
	}
	args := append(append([]string{}, c.Entrypoint...), c.Cmd...)
	if len(c.Command) > 0 {
		args = append(append([]string{}, c.Command...), c.Args...)
	} else if len(c.Args) > 0 {
		args = append(append([]string{}, c.Entrypoint...), c.Args...)
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + a.spec.Hostname}
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	cwd := c.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	config := map[string]any{
		"ociVersion": "1.0.2",
		"process":    map[string]any{"args": args, "env": env, "cwd": cwd, "user": map[string]any{"uid": 0, "gid": 0}},
		"root":       map[string]any{"path": root},
		"hostname":   a.spec.Hostname,
		"mounts": []map[string]any{
			{"destination": "/proc", "type": "proc", "source": "proc"},
			{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "mode=755"}},
			{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "nodev"}},
		},
		"linux": map[string]any{"namespaces": []map[string]string{{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}}},
	}
	b, _ := json.Marshal(config)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(a.logPath(c.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	runtime := a.bc.Runtime
	if runtime == "" {
		runtime = "runc"
	}
	cmd := exec.Command(runtime, "--root", filepath.Join(a.bc.StateDir, "runtime"), "run", "--bundle", bundle, a.spec.UID[:8]+"-"+c.Name)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = logf, &stderr
	started := time.Now().UTC()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	a.set(i, guestchannel.ContainerState{Kind: guestchannel.StateRunning, StartedAt: &started}, guestchannel.PhaseRunning)
	fmt.Fprintf(os.Stderr, "standinagent: container %s running\n", c.Name)
	err = cmd.Wait()
	finished := time.Now().UTC()
	code := int32(0)
	if ee, ok := err.(*exec.ExitError); ok {
		code = int32(ee.ExitCode())
	} else if err != nil {
		return fmt.Errorf("container %s: %w", c.Name, err)
	}
	if stderr.Len() > 0 {
		fmt.Fprintf(os.Stderr, "standinagent: %s: %s\n", runtime, stderr.String())
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	a.set(i, guestchannel.ContainerState{Kind: guestchannel.StateTerminated, Reason: reason, ExitCode: code,
		StartedAt: &started, FinishedAt: &finished}, "")
	return nil
}

func (a *agent) set(i int, s guestchannel.ContainerState, phase string) {
	a.mu.Lock()
	a.states[i].State = s
	a.states[i].Started = s.Kind == guestchannel.StateRunning
	a.states[i].Ready = a.states[i].Started
	if phase != "" {
		a.phase = phase
	}
	a.mu.Unlock()
	a.report(false)
}
