package allinone

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrStateDirInUse means another `podvisor up` holds the state dir.
var ErrStateDirInUse = errors.New("state dir in use")

// lockStateDir takes an exclusive lock on <state-dir>/lock for the life of
// the process. Two `up`s on one state dir would run two NATS servers on one
// JetStream store and two Redis servers on one append-only file, and the
// second would overwrite the env file the first one's users rely on. The
// kernel drops the lock when the process dies, however it dies.
func (s *System) lockStateDir() error {
	path := filepath.Join(s.cfg.StateDir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("up: lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if holder == "" {
			holder = "?"
		}
		return fmt.Errorf("up: %w: another podvisor up (pid %s) is using %s; stop it or pass another --state-dir", ErrStateDirInUse, holder, s.cfg.StateDir)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	s.onClose(func() {
		_ = os.Remove(filepath.Join(s.cfg.StateDir, "env")) // its endpoints are about to close
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
	return nil
}
