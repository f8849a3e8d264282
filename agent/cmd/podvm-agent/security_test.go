package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
)

// A container's securityContext and limits as the pod says, in a VM of
// one CPU: a read-only root refuses writes; runAsNonRoot refuses to create
// a container that would run as root, saying why, and lets one with a
// non-zero runAsUser run, its exec commands as that user in its working
// directory; a CPU limit above the VM's CPUs is capped to
// them (a cgroup v1 hierarchy refuses a child's quota above its parent's,
// and the container would never start).
func TestSecurityContextAndALimitAboveTheVM(t *testing.T) {
	needGuest(t)
	uid := int64(1000)
	ro := sh("ro", "touch /x 2>/dev/null && echo wrote || echo refused; exec sleep 3600")
	ro.ReadOnlyRootFilesystem = true
	asRoot := sh("as-root", "exec sleep 3600")
	asRoot.RunAsNonRoot = true
	asUser := sh("as-user", "id -u; exec sleep 3600")
	asUser.RunAsNonRoot, asUser.RunAsUser, asUser.WorkingDir = true, &uid, "/tmp"
	big := sh("big", "exec sleep 3600")
	big.Resources.CPULimitMilli = 4000
	spec := image.Spec("sec", "Always", 1, nil, []guestchannel.Container{ro, asRoot, asUser, big})
	g := guest(t, spec, guesttest.Options{VMCPUs: 1})

	v := g.Host.Wait("ro, as-user and big running; as-root refused", wait, func(v guesttest.View) bool {
		c := v.Container("as-root")
		refused := c.State.Kind == guestchannel.StateWaiting && strings.Contains(c.State.Message, "runAsNonRoot")
		return running("ro")(v) && running("as-user")(v) && running("big")(v) && refused
	})
	// As the kubelet: a configuration error, the container waiting (no
	// process ran, so no crash and no restart), the pod Pending.
	if c := v.Container("as-root"); c.Ready || c.Started || c.State.Reason != "CreateContainerConfigError" || c.RestartCount != 0 || c.LastState != nil {
		t.Errorf("as-root = %+v, want it waiting (CreateContainerConfigError), never started nor restarted", c)
	}
	if v.Phase != "Pending" {
		t.Errorf("pod phase %q with a container that cannot be created, want Pending", v.Phase)
	}
	for _, c := range []struct{ name, want string }{{"ro", "refused"}, {"as-user", "1000"}} {
		var out string
		guesttest.Eventually(t, c.name+"'s output", wait, func() bool {
			out, _ = g.Host.Logs(guestchannel.LogsRequest{Container: c.name})
			return out != ""
		})
		if strings.TrimSpace(out) != c.want {
			t.Errorf("%s printed %q, want %s", c.name, out, c.want)
		}
	}
	// exec runs as the container's process does: its user, in its
	// working directory.
	if r := g.Host.Exec("as-user", nil, "sh", "-c", "id -u; pwd"); r.Stdout != "1000\n/tmp\n" || r.ExitCode != 0 {
		t.Errorf("exec in as-user: %+v, want uid 1000 in /tmp", r)
	}
	quota, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu", g.Cgroup, "big", "cpu.cfs_quota_us"))
	if err != nil || strings.TrimSpace(string(quota)) != "100000" {
		t.Errorf("big's CPU quota = %q (%v), want the VM's one CPU (100000)", quota, err)
	}
}
