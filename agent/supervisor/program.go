package supervisor

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/podvisor/podvisor/agent/bundle"
	"github.com/podvisor/podvisor/agent/guestchannel"
)

// The exit codes a shell, kubectl and docker give a command that could not
// be started: the OCI runtimes exit 255 for it, which is also a code a
// program may exit with itself.
const (
	exitNotExecutable = 126
	exitNotFound      = 127
	exitRuntimeFailed = 255
)

var (
	errProgramNotFound      = errors.New("executable file not found")
	errProgramNotExecutable = errors.New("permission denied")
)

// cannotRun is the exit code and the message (a line) a shell gives
// program, which lookProgram said (err) cannot run.
func cannotRun(program string, err error) (int32, string) {
	switch {
	case errors.Is(err, errProgramNotExecutable):
		return exitNotExecutable, program + ": permission denied\n"
	case strings.Contains(program, "/"):
		return exitNotFound, program + ": no such file or directory\n"
	default:
		return exitNotFound, program + ": executable file not found in $PATH\n"
	}
}

// lookProgram finds program as the container's exec would: a name with a
// slash from the working directory, any other in the container's PATH.
// root is the container's root as its processes see it (/proc/<pid>/root
// of one of them: its image, its volumes and the runtime's own mounts
// such as /dev). It answers errProgramNotFound, errProgramNotExecutable
// or nil (found, or undecidable: the runtime's answer then stands).
func lookProgram(c *guestchannel.Container, root, program string) error {
	if _, err := os.Stat(root); c == nil || err != nil {
		return nil // the process is gone: the runtime says what it says
	}
	if strings.Contains(program, "/") {
		p := program
		if !path.IsAbs(p) {
			p = path.Join("/", c.WorkingDir, p)
		}
		return executable(root, p)
	}
	dirs := bundle.DefaultPath
	for _, e := range c.Env {
		if e.Name == "PATH" {
			dirs = e.Value
		}
	}
	err := errProgramNotFound
	for _, d := range strings.Split(dirs, ":") {
		if d == "" {
			d = "."
		}
		if !path.IsAbs(d) {
			d = path.Join("/", c.WorkingDir, d)
		}
		switch e := executable(root, path.Join(d, program)); {
		case e == nil:
			return nil
		case errors.Is(e, errProgramNotExecutable):
			// As execvp: a later directory may still hold a runnable one.
			err = e
		}
	}
	return err
}

// executable says whether the container's file p (absolute) is a regular
// file with an execute bit.
func executable(root, p string) error {
	full, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return nil
	}
	fi, err := os.Stat(full)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return errProgramNotFound
	case err != nil:
		return nil
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return errProgramNotExecutable
	}
	return nil
}
