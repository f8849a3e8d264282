package podvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"golang.org/x/sys/unix"
)

// A pod VM's disk 0 must hold a filesystem before the agent can mount it.
// Formatting it in every guest (mkfs.ext4 at each pod's start) costs every
// pod a process and its dynamic loading on the guest's CPU. Instead, each
// datastore holds one pre-formatted ext4 disk per disk 0 capacity, the
// ephemeral template, built once; disk 0 is created as its child (a delta
// disk: govmomi's VirtualDeviceList.ChildDisk, what `govc vm.disk.attach
// -link` does), in the same CreateVM call, so a pod pays no extra vCenter
// call and its guest finds a filesystem ready to mount. The template is
// never written by a VM: each child's writes land in its own delta in the
// VM's directory, destroyed with the VM. When no template can be had
// (mkfs.ext4 missing where the provisioner runs, an upload refused), disk 0
// is created blank and the agent formats it, as before.

// templateDir is the directory of the ephemeral templates on a datastore.
const templateDir = "podvisor-templates"

// templateRetry is how long a failed template build is remembered before
// another create tries again (pods meanwhile get a blank disk 0).
const templateRetry = 5 * time.Minute

// templateBuildTimeout bounds one build (a format and an upload of the
// format's first MiBs).
const templateBuildTimeout = 10 * time.Minute

// EphemeralTemplatePath is the pre-formatted template of disk 0 for a
// capacity on a datastore.
func EphemeralTemplatePath(datastore string, mib int64) string {
	return fmt.Sprintf("[%s] %s", datastore, ephemeralTemplateRel(mib))
}

func ephemeralTemplateRel(mib int64) string {
	return fmt.Sprintf("%s/ephemeral-ext4-%dMiB/ephemeral.vmdk", templateDir, mib)
}

// FormatEphemeral formats file, a sparse file of mib MiB, the way a pod
// VM's disk 0 template is formatted: ext4 with the "encrypt" feature (for
// pods that ask for an encrypted disk 0), inode tables and journal
// initialised lazily, no blocks reserved for online growth (disk 0 keeps
// its size), one inode per 64 KiB (131,072 files on 8 GiB), and every
// group's metadata packed at the start of the disk (one flex group, no
// backup superblock) with the journal right after it, so that all the
// format writes lies in the first capacity/256 + 2 MiB: that head is what
// is written to the datastore. The journal stays: container logs on disk 0
// must survive a guest crash.
func FormatEphemeral(ctx context.Context, file string, mib int64) error {
	journalAt := fmt.Sprintf("%dM", (mib+255)/256+2)
	cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "podvisor-eph",
		"-O", "encrypt,^resize_inode,sparse_super2", "-G", "4096", "-i", "65536", "-J", "location="+journalAt,
		"-E", "num_backup_sb=0,lazy_itable_init=1,lazy_journal_init=1", file)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %v: %s", file, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// templates remembers, per datastore and capacity, the ephemeral template
// once built, or why it could not be built.
type templates struct {
	mu    sync.Mutex
	state map[string]*templateState
}

type templateState struct {
	done chan struct{} // closed when the build ended; then path, err, at are set
	path string
	err  error
	at   time.Time
}

// ephemeralTemplate returns the datastore path of the ephemeral template
// of mib MiB on datastore ds, or "" while there is none. The first call
// for a datastore and capacity starts building it in the background: no
// pod waits for the build (those created meanwhile get a blank disk 0,
// which their agent formats); a failed build is tried again after
// templateRetry.
func (c *Client) ephemeralTemplate(ds string, mib int64) string {
	st := c.templateBuild(ds, mib)
	select {
	case <-st.done:
		return st.path
	default:
		return ""
	}
}

// EphemeralTemplate waits for the ephemeral template of mib MiB on
// datastore ds, starting its build if none has started, and returns its
// datastore path, or why it could not be built.
func (c *Client) EphemeralTemplate(ctx context.Context, ds string, mib int64) (string, error) {
	st := c.templateBuild(ds, mib)
	select {
	case <-st.done:
		return st.path, st.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// templateBuild returns the newest build of a template, starting one when
// there is none or the last one failed more than templateRetry ago.
func (c *Client) templateBuild(ds string, mib int64) *templateState {
	key := fmt.Sprintf("%s/%d", ds, mib)
	c.templates.mu.Lock()
	defer c.templates.mu.Unlock()
	if c.templates.state == nil {
		c.templates.state = map[string]*templateState{}
	}
	st := c.templates.state[key]
	if st != nil {
		select {
		case <-st.done:
			if st.err == nil || time.Since(st.at) < templateRetry {
				return st
			}
		default:
			return st // building
		}
	}
	st = &templateState{done: make(chan struct{})}
	c.templates.state[key] = st
	go c.build(st, ds, mib)
	return st
}

// build runs buildTemplate for st.
func (c *Client) build(st *templateState, ds string, mib int64) {
	ctx, cancel := context.WithTimeout(context.Background(), templateBuildTimeout)
	defer cancel()
	begun := time.Now()
	st.path, st.err = c.buildTemplate(ctx, ds, mib)
	if st.err != nil {
		st.path = ""
	}
	st.at = time.Now()
	close(st.done)
	switch {
	case c.Logger == nil:
	case st.err != nil:
		c.Logger.Warn("no ephemeral template: pod VMs get a blank disk 0, formatted by their agent",
			"datastore", ds, "mib", mib, "retry_in", templateRetry, "err", st.err)
	default:
		c.Logger.Info("ephemeral template ready: pod VMs get disk 0 formatted", "datastore", ds, "mib", mib,
			"disk", st.path, "took", time.Since(begun).Round(time.Millisecond))
	}
}

// buildTemplate makes sure the template exists on the datastore: a ready
// marker beside it says a build finished. Otherwise it formats the disk
// locally, creates a disk under a name of this build's own, writes the
// formatted extent into it through the datastore file API, and moves it to
// the template's name, then writes the marker. Several provisioner
// replicas may build at once: each writes only its own staged disk, and a
// move never replaces a template (another replica's, complete, that pod
// VMs may already be children of); the one whose move finds the name taken
// drops its copy and marks the template there as ready.
func (c *Client) buildTemplate(ctx context.Context, ds string, mib int64) (string, error) {
	disk := EphemeralTemplatePath(ds, mib)
	rel := ephemeralTemplateRel(mib)
	dir := filepath.ToSlash(filepath.Dir(rel))
	marker := dir + "/ready"
	store, err := find.NewFinder(c.vc).SetDatacenter(c.dc).Datastore(ctx, ds)
	if err != nil {
		return "", fmt.Errorf("datastore %s: %w", ds, err)
	}
	if _, err := store.Stat(ctx, marker); err == nil {
		return disk, nil
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return "", fmt.Errorf("ephemeral template %s: %w (install e2fsprogs where the provisioner runs)", disk, err)
	}
	work, err := os.MkdirTemp("", "podvisor-ephemeral-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	raw := filepath.Join(work, "ephemeral.ext4")
	if err := os.WriteFile(raw, nil, 0o600); err != nil {
		return "", err
	}
	if err := os.Truncate(raw, mib<<20); err != nil {
		return "", err
	}
	if err := FormatEphemeral(ctx, raw, mib); err != nil {
		return "", err
	}
	// Only the formatted head is written: the rest of the disk reads as
	// zeros, as a thin disk's unwritten blocks do.
	head, err := dataEnd(raw)
	if err != nil {
		return "", err
	}
	if err := os.Truncate(raw, head); err != nil {
		return "", err
	}
	fm := object.NewFileManager(c.vc)
	if err := fm.MakeDirectory(ctx, fmt.Sprintf("[%s] %s", ds, dir), c.dc, true); err != nil && !fault.Is(err, &types.FileAlreadyExists{}) {
		return "", fmt.Errorf("ephemeral template directory: %w", err)
	}
	vdm := object.NewVirtualDiskManager(c.vc)
	stagedRel := fmt.Sprintf("%s/build-%s.vmdk", dir, filepath.Base(work)) // work's name is unique to this build
	staged := fmt.Sprintf("[%s] %s", ds, stagedRel)
	spec := &types.FileBackedVirtualDiskSpec{VirtualDiskSpec: types.VirtualDiskSpec{
		DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
		CapacityKb: mib << 10}
	t, err := vdm.CreateVirtualDisk(ctx, staged, c.dc, spec)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return "", fmt.Errorf("create ephemeral template %s: %w", staged, err)
	}
	moved := false
	defer func() {
		if !moved { // a failed build, or another replica's template won
			if t, err := vdm.DeleteVirtualDisk(context.WithoutCancel(ctx), staged, c.dc); err == nil {
				_ = t.Wait(context.WithoutCancel(ctx))
			}
		}
	}()
	p := soap.DefaultUpload
	if err := store.UploadFile(ctx, raw, strings.TrimSuffix(stagedRel, ".vmdk")+"-flat.vmdk", &p); err != nil {
		return "", fmt.Errorf("write ephemeral template %s: %w", staged, err)
	}
	t, err = vdm.MoveVirtualDisk(ctx, staged, c.dc, disk, c.dc, false)
	if err == nil {
		err = t.Wait(ctx)
	}
	switch {
	case err == nil:
		moved = true
	case fault.Is(err, &types.FileAlreadyExists{}):
		// Another build moved its template in first: it is complete (a
		// template only ever gets its name whole), so it is the one.
	default:
		return "", fmt.Errorf("move ephemeral template %s into place: %w", disk, err)
	}
	mark := filepath.Join(work, "ready")
	if err := os.WriteFile(mark, []byte(fmt.Sprintf("%d\n", mib)), 0o600); err != nil {
		return "", err
	}
	if err := store.UploadFile(ctx, mark, marker, &p); err != nil {
		return "", fmt.Errorf("mark ephemeral template %s ready: %w", disk, err)
	}
	return disk, nil
}

// dataEnd is the end of the last data (not hole) of a sparse file.
func dataEnd(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var end int64
	for off := int64(0); off < st.Size(); {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: only a hole is left
		}
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			return 0, fmt.Errorf("seek hole in %s: %w", path, err)
		}
		end, off = hole, hole
	}
	if end == 0 {
		return 0, errors.New("the formatted disk holds no data")
	}
	return end, nil
}
