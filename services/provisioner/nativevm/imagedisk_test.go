package nativevm_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/vim25/soap"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
)

// TestImageDiskBuiltOnceWhileVMsAskTogether asks for the boot image disk
// of one image from several VMs at once, in two controllers (two
// provisioner replicas): each controller builds it once, every caller gets
// a disk that is marked ready and holds a whole, consistent filesystem
// with the image's init, and no caller's disk is rewritten by another's
// build (which used to leave a copy half overwritten).
func TestImageDiskBuiltOnceWhileVMsAskTogether(t *testing.T) {
	privtest.RequireTools(t, "e2fsck", "debugfs")
	e := newEnv(t)
	ctx := context.Background()
	other, err := nativevm.New(ctx, e.cfg, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	store, err := find.NewFinder(e.s.Vim()).SetDatacenter(e.s.Datacenter).Datastore(ctx, "shared-ds")
	if err != nil {
		t.Fatal(err)
	}
	// Each caller copies its disk away as soon as it has it (as a VM's
	// boot disk is copied) and checks the copy: a whole filesystem with
	// the image's init.
	fetch := func(disk string) (string, error) {
		flat := strings.TrimSuffix(strings.TrimPrefix(disk, "[shared-ds] "), ".vmdk") + "-flat.vmdk"
		f, err := os.CreateTemp(t.TempDir(), "flat-")
		if err != nil {
			return "", err
		}
		f.Close()
		if err := store.DownloadFile(ctx, flat, f.Name(), &soap.DefaultDownload); err != nil {
			return "", fmt.Errorf("download %s: %w", flat, err)
		}
		if out, err := exec.Command("e2fsck", "-fn", f.Name()).CombinedOutput(); err != nil {
			return "", fmt.Errorf("%s: e2fsck: %v\n%s", disk, err, out)
		}
		if out, err := exec.Command("debugfs", "-R", "stat /sbin/init", f.Name()).CombinedOutput(); err != nil || !strings.Contains(string(out), "Inode:") {
			return "", fmt.Errorf("%s: no /sbin/init: %v\n%s", disk, err, out)
		}
		b, err := os.ReadFile(f.Name())
		return fmt.Sprintf("%x", sha256.Sum256(b)), err
	}
	type got struct{ disk, sum string }
	controllers := []*nativevm.Controller{e.ctl, other}
	const callers = 3
	results := make([][callers]got, len(controllers))
	var g errgroup.Group
	for i, c := range controllers {
		for j := range callers {
			g.Go(func() error {
				disk, size, err := c.ImageDisk(ctx, e.img, "shared-ds")
				if err != nil {
					return err
				}
				if size <= 0 {
					return fmt.Errorf("%s: capacity %d", disk, size)
				}
				sum, err := fetch(disk)
				results[i][j] = got{disk, sum}
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// No disk handed out changed afterwards (another build did not
	// write over it), and one controller's callers shared one build.
	for i, r := range results {
		for j := range r {
			if r[j].disk != r[0].disk {
				t.Errorf("controller %d gave its callers different disks: %v", i, r)
			}
			sum, err := fetch(r[j].disk)
			if err != nil {
				t.Fatal(err)
			}
			if sum != r[j].sum {
				t.Errorf("%s changed after it was handed out", r[j].disk)
			}
		}
	}
	// Once ready, a later caller is given the marked disk without a build.
	again, _, err := other.ImageDisk(ctx, e.img, "shared-ds")
	if err != nil {
		t.Fatal(err)
	}
	if again != results[0][0].disk && again != results[1][0].disk {
		t.Errorf("after the builds, the ready disk is %q, none of those handed out (%v)", again, results)
	}
}
