// Package privtest is the agent module's copy of shared/privtest (the agent
// does not depend on the control plane's modules): tests that need root skip
// with a reason, or fail where PODVISOR_REQUIRE_PRIVILEGED=1.
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

// Require skips (or, when EnvRequire is set, fails) the test unless the
// process runs as root. why says what the test needs root for.
func Require(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	unavailable(t, "needs root ("+why+"); run the tests as root")
}

// RequireTools is Require for executables the test runs: each must be on
// PATH.
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
