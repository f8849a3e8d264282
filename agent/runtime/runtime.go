// Package runtime drives an OCI runtime binary (runc or crun: both take the
// same command line) for the agent.
//
// A container is started with `run --detach --pid-file` (Run), or in two
// steps, `create --pid-file` (Create: namespaces, mounts, cgroup, its init
// waiting) then `start` (Start: the command runs), so that a pod's
// containers can be made before its network is there and started once it
// is. Either way runc sets the container up and exits, and the process is re-parented to the agent
// (PID 1 of the guest, or a child subreaper), which reaps it with wait4 and
// so learns its exact exit code or signal — a foreground `runc run` would
// fold a signal into 128+n. The container's stdout and stderr are the file
// given to Start (one pipe, so both streams keep their write order).
package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/internal/reaper"
)

// Runtime is one OCI runtime with its state directory.
type Runtime struct {
	// Bin is the runtime's path.
	Bin string
	// Root is the runtime's state directory (--root).
	Root string
}

// Preferred lists the runtimes New tries when none is named, best first:
// crun starts a container in a fraction of runc's time (one C process
// against runc's re-exec of itself through its Go init), and both drive
// the same bundles.
var Preferred = []string{"crun", "runc"}

// New finds bin (empty: the first of Preferred on PATH) and prepares root.
func New(bin, root string) (*Runtime, error) {
	candidates := Preferred
	if bin != "" {
		candidates = []string{bin}
	}
	var path string
	for _, c := range candidates {
		if p, err := exec.LookPath(c); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		return nil, fmt.Errorf("runtime: none of %s found (the guest needs runc or crun)", strings.Join(candidates, ", "))
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("runtime: state dir: %w", err)
	}
	return &Runtime{Bin: path, Root: root}, nil
}

// Name is the runtime's base name (runc, crun).
func (r *Runtime) Name() string { return filepath.Base(r.Bin) }

func (r *Runtime) command(args ...string) *exec.Cmd {
	return exec.Command(r.Bin, append([]string{"--root", r.Root}, args...)...)
}

func (r *Runtime) run(args ...string) error {
	out, st, err := reaper.Output(r.command(args...))
	if err != nil {
		return fmt.Errorf("%s %s: %w", r.Name(), args[0], err)
	}
	if st.ExitCode() != 0 {
		return fmt.Errorf("%s %s: exit %d: %s", r.Name(), args[0], st.ExitCode(), strings.TrimSpace(string(out)))
	}
	return nil
}

// Process is a started container's init process, or a runtime exec.
type Process struct {
	Pid int
	// Done receives the process's status once.
	Done <-chan reaper.Status
}

// Run creates and starts container id from bundle in one runtime process
// (`run --detach`), its stdout and stderr on out, stdin empty.
func (r *Runtime) Run(id, bundle string, out *os.File) (*Process, error) {
	return r.launch("run", id, bundle, out)
}

// Create creates container id from bundle (`create`): its namespaces,
// mounts, cgroup and init process are made, the init waiting to exec the
// container's command until Start. stdout and stderr are out, stdin empty.
// The process it returns is the container's init.
func (r *Runtime) Create(id, bundle string, out *os.File) (*Process, error) {
	return r.launch("create", id, bundle, out)
}

// Start starts the command of container id, created by Create.
func (r *Runtime) Start(id string) error {
	return r.run("start", id)
}

// launch runs `run --detach` or `create` and returns the container's init.
func (r *Runtime) launch(verb, id, bundle string, out *os.File) (*Process, error) {
	pidFile := filepath.Join(bundle, "init.pid")
	_ = os.Remove(pidFile)
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devNull.Close()
	logFile := filepath.Join(bundle, "runtime.log")
	_ = os.Remove(logFile)
	args := []string{"--root", r.Root, "--log", logFile, verb}
	if verb == "run" {
		args = append(args, "--detach")
	}
	// runc hands its own stdio to the container; its complaints go to
	// --log, read back when it fails.
	cmd := exec.Command(r.Bin, append(args, "--pid-file", pidFile, "--bundle", bundle, id)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devNull, out, out
	st, err := reaper.Wait(cmd)
	if err != nil {
		return nil, fmt.Errorf("%s %s %s: %w", r.Name(), verb, id, err)
	}
	if st.ExitCode() != 0 {
		msg, _ := os.ReadFile(logFile)
		_ = r.Delete(id)
		return nil, fmt.Errorf("%s %s %s: exit %d: %s", r.Name(), verb, id, st.ExitCode(), lastLine(string(msg)))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, fmt.Errorf("%s %s %s: pid file: %w", r.Name(), verb, id, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s %s %s: pid file: %w", r.Name(), verb, id, err)
	}
	return &Process{Pid: pid, Done: reaper.Claim(pid)}, nil
}

// Signal sends sig to every process of the container (its init's death
// ends the others with its pid namespace).
func (p *Process) Signal(sig unix.Signal) error {
	if err := unix.Kill(p.Pid, sig); err != nil && err != unix.ESRCH {
		return err
	}
	return nil
}

// Exists reports whether the runtime keeps state of container id (runc
// and crun both keep it in <root>/<id>): a container left by a crashed
// agent, which Delete must clear before the id is run again. Asking the
// directory saves a process per start.
func (r *Runtime) Exists(id string) bool {
	_, err := os.Lstat(filepath.Join(r.Root, id))
	return err == nil
}

// Delete removes the container's runtime state and cgroup; the container's
// process must have ended.
func (r *Runtime) Delete(id string) error {
	return r.run("delete", "--force", id)
}

// ExecAs is who an exec runs as, and where: the container's process's
// user and working directory (the runtimes' exec runs as root in / unless
// told).
type ExecAs struct {
	UID, GID uint32
	Cwd      string
}

// Exec runs args in container id's namespaces and cgroup with the
// container's environment, as as says; stdin, stdout and stderr are the
// given files (nil: empty input, discarded output).
func (r *Runtime) Exec(id string, args []string, as ExecAs, stdin, stdout, stderr *os.File) (*Process, error) {
	flags := []string{"exec", "--user", fmt.Sprintf("%d:%d", as.UID, as.GID)}
	if as.Cwd != "" {
		flags = append(flags, "--cwd", as.Cwd)
	}
	cmd := r.command(append(append(flags, id), args...)...)
	// A nil file must stay a nil io.Reader/Writer, which exec opens as
	// /dev/null: a typed nil would leave the fd closed, and crun fails
	// on a closed stdin ("fchown std stream 0").
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if stderr != nil {
		cmd.Stderr = stderr
	}
	done, err := reaper.Start(cmd)
	if err != nil {
		return nil, fmt.Errorf("%s exec %s: %w", r.Name(), id, err)
	}
	return &Process{Pid: cmd.Process.Pid, Done: done}, nil
}

// lastLine keeps the runtime's final complaint, which names the cause.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
