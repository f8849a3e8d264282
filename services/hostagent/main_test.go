package hostagent_test

import (
	"os"
	"testing"

	"github.com/podvisor/podvisor/shared/simtest"
)

// TestMain removes the pod VM agent the tests built (simtest.AgentBinary).
func TestMain(m *testing.M) {
	code := m.Run()
	simtest.RemoveBinaries()
	os.Exit(code)
}
