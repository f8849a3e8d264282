package runtime

import (
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
)

// A process started on the host thread sees no hybrid cgroup2 mount and
// mounts of its own stay out of the host's namespace.
func TestOnHostThreadHidesTheHybridHierarchy(t *testing.T) {
	privtest.Require(t, "unshares a mount namespace")
	var hostMounts string
	if b, err := exec.Command("cat", "/proc/self/mountinfo").Output(); err == nil {
		hostMounts = string(b)
	}
	var inside string
	err := OnHostThread(func() error {
		b, err := exec.Command("cat", "/proc/self/mountinfo").Output()
		inside = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(inside, " /sys/fs/cgroup/unified ") {
		t.Errorf("a process on the host thread still sees /sys/fs/cgroup/unified")
	}
	var st unix.Statfs_t
	hybrid := strings.Contains(hostMounts, " /sys/fs/cgroup/unified ")
	if hybrid && (unix.Statfs("/sys/fs/cgroup/unified", &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC) {
		t.Errorf("the host lost its /sys/fs/cgroup/unified")
	}
	if !hybrid {
		t.Log("this host is not hybrid: nothing to hide")
	}
}
