package build

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Packages of the binaries the image carries.
const (
	InitPackage = "github.com/podvisor/podvisor/agent/cmd/podvm-init"
	// AgentPackage is the pod VM agent, PID 1 once the first stage is done.
	AgentPackage = "github.com/podvisor/podvisor/agent/cmd/podvm-agent"
)

// GoBinaries builds the first stage and the agent, static, into dir and
// returns their paths. It runs in the repository's workspace.
func GoBinaries(dir string) (init, agent string, err error) {
	init, agent = filepath.Join(dir, "podvm-init"), filepath.Join(dir, "podvm-agent")
	for out, pkg := range map[string]string{init: InitPackage, agent: AgentPackage} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w: %s", pkg, err, stderr.String())
		}
	}
	return init, agent, nil
}
