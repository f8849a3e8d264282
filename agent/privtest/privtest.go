// Package privtest decides what a test that needs root does where it cannot
// have it.
//
// Tests of the data plane mount filesystems, make namespaces, cgroups, loop
// devices and bridges: they need root (CAP_SYS_ADMIN). Elsewhere they skip with
// a message saying why. In CI they must never skip silently, so `.ci/run`
// exports PODVISOR_REQUIRE_PRIVILEGED=1, which turns "cannot run as root here"
// into a failure.
//
// It lives in the agent module, the one module of the tree that depends on no
// other, so that the guest's tests and the control plane's share it.
//
//	func TestGuestRuns(t *testing.T) {
//		privtest.Require(t, "mounts the image disks")
//		...
//	}
package privtest

import (
	"os"
	"os/exec"
	"testing"
)

// EnvRequire is the variable that makes a missing privilege fail a test
// instead of skipping it.
const EnvRequire = "PODVISOR_REQUIRE_PRIVILEGED"

// Required reports whether the environment demands that privileged tests run.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Require skips (or, when EnvRequire is set, fails) the test unless the process
// runs as root. why says what the test needs root for.
func Require(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	unavailable(t, "needs root ("+why+"); run the tests as root")
}

// RequireTools is Require for executables the test runs (runc, mkfs.erofs,
// busybox): each must be on PATH.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, tool+" is not on PATH (.ci/run installs it: apt-get install the package that has it)")
		}
	}
}

func unavailable(t testing.TB, msg string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s; %s=1 makes this a failure", msg, EnvRequire)
	}
	t.Skip(msg)
}
