package cli

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// podvisor install on a fresh simulated vCenter creates the folder, the
// boot image's files and the template; a second run changes nothing.
func TestInstallCommand(t *testing.T) {
	d := simtest.Start(t, sim.Config{Clusters: 2, HostsPerCluster: 2}) // no one default resource pool
	img := t.TempDir()
	if err := os.WriteFile(filepath.Join(img, "podvm-flat.vmdk"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "podvm.vmdk"), []byte("# Disk DescriptorFile\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"install", "--vcenter-url", d.URL().String(), "--image-dir", img}
	out, errOut, code := run(t, t.TempDir(), "", args...)
	if code != 0 || strings.Count(out, "created") != 4 {
		t.Fatalf("first run: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "template /") || !strings.Contains(out, "/vm/podvisor/podvisor-podvm-") {
		t.Fatalf("first run does not name the template:\n%s", out)
	}
	// The setting that gives the provisioner's pod VMs the boot disk.
	m := regexp.MustCompile(`(?m)^  PODVISOR_PROVISIONER_BOOT_DISK="\[([^]]+)\] podvisor/boot-[0-9a-f]{12}/podvm\.vmdk"$`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("first run does not print the provisioner's boot disk setting:\n%s", out)
	} else if want := "  PODVISOR_SCHEDULER_REQUIRED_DATASTORES=\"" + m[1] + "\"\n"; !strings.Contains(out, want) {
		// and the scheduler's, naming the same datastore.
		t.Errorf("first run does not print %q:\n%s", want, out)
	}
	// and the channel settings of the provisioner and the host agents, and
	// the one that forks pod VMs.
	for _, setting := range []string{"PODVISOR_PROVISIONER_CHANNEL_URI=", "PODVISOR_HOSTAGENT_CONCENTRATOR=", "PODVISOR_HOSTAGENT_CHANNEL_KEY_FILE=",
		"PODVISOR_PROVISIONER_TEMPLATES_WARM="} {
		if !strings.Contains(out, setting) {
			t.Errorf("first run does not print %s:\n%s", setting, out)
		}
	}
	again, errOut, code := run(t, t.TempDir(), "", args...)
	if code != 0 || strings.Contains(again, "created") || strings.Count(again, "exists") != 4 {
		t.Fatalf("second run: exit %d\n%s%s", code, again, errOut)
	}

	_, errOut, code = run(t, t.TempDir(), "", append(args, "--datastore", "missing")...)
	if code == 0 || !strings.Contains(errOut, `"missing" is not an accessible datastore`) {
		t.Fatalf("missing datastore: exit %d, stderr %q", code, errOut)
	}
}
