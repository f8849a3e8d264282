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

// lookProgram finds program as the container's exec would: a name with a
// slash from the working directory, any other in the container's PATH.
// It reads the container's files from outside: its root (rootfs) and its
// volumes' directories (volumes, by volume name) where mounted. It
// answers errProgramNotFound, errProgramNotExecutable or nil (found, or
// undecidable from outside: the runtime's answer then stands).
func lookProgram(c *guestchannel.Container, rootfs string, volumes map[string]string, program string) error {
	if c == nil {
		return nil
	}
	if strings.Contains(program, "/") {
		p := program
		if !path.IsAbs(p) {
			p = path.Join("/", c.WorkingDir, p)
		}
		return executable(c, rootfs, volumes, p)
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
		switch e := executable(c, rootfs, volumes, path.Join(d, program)); {
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
func executable(c *guestchannel.Container, rootfs string, volumes map[string]string, p string) error {
	root, rel := rootfs, p
	// The deepest volume mounted over p holds it.
	best := -1
	for _, m := range c.VolumeMounts {
		mp := path.Clean("/" + m.MountPath)
		dir, ok := volumes[m.Name]
		if !ok || len(mp) <= best || (p != mp && !strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/")) {
			continue
		}
		best, root, rel = len(mp), dir, strings.TrimPrefix(p, mp)
	}
	full, err := securejoin.SecureJoin(root, rel)
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
