package nativevm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/registryerr"
	"github.com/podvisor/podvisor/shared/rootfs"
)

// emptyBootDiskBytes is the boot disk of an image without an OCI root
// filesystem (a content library template's OS is not unpacked here): an
// empty disk a real VM's installer or template fills.
const emptyBootDiskBytes = 1 << 30

// readyMarker is written beside an image disk once its bytes are complete,
// so that a build interrupted half-way is redone rather than booted.
const readyMarker = "ready"

// bootDisk returns the VM's own boot disk (its datastore path), copying it
// from the image's disk; the returned capacity is the disk's size. For a
// VM made again (again: vCenter lost the VM it had made) a boot disk left
// on the datastore is kept, with what its guest wrote.
func (c *Controller) bootDisk(ctx context.Context, rec *events.VMRecord, ds, vmName string, again bool) (string, int64, error) {
	dst := fmt.Sprintf("[%s] %s/root.vmdk", ds, vmName)
	dc := c.dc
	fm := object.NewFileManager(c.vc)
	if err := fm.MakeDirectory(ctx, fmt.Sprintf("[%s] %s", ds, vmName), dc, true); err != nil && !fault.Is(err, &types.FileAlreadyExists{}) {
		return "", 0, fmt.Errorf("VM directory: %w", err)
	}
	vdm := object.NewVirtualDiskManager(c.vc)
	keep := again && c.diskExists(ctx, dst)
	if !keep {
		// A copy left by an attempt that failed before the VM existed is
		// replaced: the VM boots from a fresh copy of its image.
		// A disk still locked by a running VM is not replaced: the error
		// says so, rather than a copy failing on the file it left.
		t, err := vdm.DeleteVirtualDisk(ctx, dst, dc)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil && !fault.Is(err, &types.FileNotFound{}) {
			return "", 0, fmt.Errorf("replace boot disk %s: %w", dst, err)
		}
	}
	if rec.Image.OCI == "" {
		if keep {
			return dst, emptyBootDiskBytes, nil
		}
		spec := &types.FileBackedVirtualDiskSpec{VirtualDiskSpec: types.VirtualDiskSpec{
			DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
			CapacityKb: emptyBootDiskBytes >> 10}
		t, err := vdm.CreateVirtualDisk(ctx, dst, dc, spec)
		if err == nil {
			err = t.Wait(ctx)
		}
		if err != nil {
			return "", 0, fmt.Errorf("create boot disk %s: %w", dst, err)
		}
		return dst, emptyBootDiskBytes, nil
	}
	src, digest, err := c.imageDisk(ctx, rec.Image.OCI, rec.ImageDigest, ds)
	if err != nil {
		return "", 0, err
	}
	if err := c.keepImageDigest(ctx, rec, digest); err != nil {
		return "", 0, err
	}
	if keep {
		return dst, src.size, nil
	}
	t, err := vdm.CopyVirtualDisk(ctx, src.disk, dc, dst, dc, nil, false)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return "", 0, fmt.Errorf("copy image disk %s to %s: %w", src.disk, dst, err)
	}
	return dst, src.size, nil
}

// keepImageDigest records the digest the VM's image reference resolved to
// (VMRecord.ImageDigest), by compare-and-set, so that its boot disk is
// built again from that image disk without the registry. A declaration
// that changed the reference meanwhile keeps its own: the digest is not
// written to a record of another reference.
func (c *Controller) keepImageDigest(ctx context.Context, rec *events.VMRecord, digest string) error {
	if rec.ImageDigest == digest {
		return nil
	}
	ref := rec.Image.OCI
	_, err := c.mutateVM(ctx, rec.Namespace, rec.Name, rec.UID, func(r *events.VMRecord) error {
		if r.Image.OCI != ref || r.ImageDigest == digest {
			return record.ErrUnchanged
		}
		r.ImageDigest = digest
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the digest of image %s: %w", ref, err)
	}
	rec.ImageDigest = digest
	return nil
}

// imageDisk returns the image's disk on datastore ds and the image's
// digest, building the disk once per digest: the flattened root
// filesystem as ext4 in the flat extent.
//
// A digest resolved before (pinned: the VM record's ImageDigest) names the
// disk's directory, so a disk built of it is found without the registry:
// the registry is asked only when none is ready, and for that digest
// rather than what the reference's tag names by then. Without one (a
// record written before digests were kept) the reference is resolved at
// the registry.
//
// A disk, once marked ready, is never written again: VMs copy it while
// others may be asking for it. Callers in one process share one build
// (singleflight); builders in several processes (provisioner replicas)
// each build into a directory of their own and the ready marker names the
// finished one, so whichever marker is read names a complete disk. A
// builder that loses the race leaves its copy behind, unused.
func (c *Controller) imageDisk(ctx context.Context, ref, pinned, ds string) (builtDisk, string, error) {
	var opts []name.Option
	if r, err := name.ParseReference(ref); err == nil && slices.Contains(c.cfg.InsecureRegistries, r.Context().RegistryStr()) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return builtDisk{}, "", bus.Permanent(fmt.Errorf("image %q: %w", ref, err))
	}
	store, err := find.NewFinder(c.vc).SetDatacenter(c.dc).Datastore(ctx, ds)
	if err != nil {
		return builtDisk{}, "", fmt.Errorf("datastore %s: %w", ds, err)
	}
	// A pinned digest that does not parse (not one this controller
	// wrote) is no digest: the reference is resolved as without one.
	if h, err := v1.NewHash(pinned); pinned != "" && err == nil {
		if b, ok := c.built(ctx, store, ds, c.imageDir(h)); ok {
			return b, h.String(), nil
		}
		r = r.Context().Digest(h.String())
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(c.pull))
	if err != nil {
		return builtDisk{}, "", pullError(r, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return builtDisk{}, "", pullError(r, err)
	}
	dir := c.imageDir(digest)
	if b, ok := c.built(ctx, store, ds, dir); ok {
		return b, digest.String(), nil
	}
	v, err, _ := c.builds.Do(ds+"\x00"+dir, func() (any, error) {
		if b, ok := c.built(ctx, store, ds, dir); ok {
			return b, nil
		}
		return c.buildImageDisk(ctx, img, ref, store, ds, dir)
	})
	if err != nil {
		return builtDisk{}, "", err
	}
	return v.(builtDisk), digest.String(), nil
}

// pullError wraps the error of a pull of ref, without the page a server
// that is no registry (the registry moved) answers with: it tells nothing
// more than its status, and would fill the VM's condition.
func pullError(ref name.Reference, err error) error {
	return fmt.Errorf("pull %s: %w", ref, registryerr.Brief(err))
}

// imageDir is the datastore directory of the image disk of a digest.
func (c *Controller) imageDir(digest v1.Hash) string {
	return path.Join(c.cfg.ImageRoot, digest.Hex[:16])
}

// builtDisk is a finished image disk: its datastore path and capacity.
type builtDisk struct {
	disk string
	size int64
}

// buildImageDisk unpacks the image, formats it as ext4 and uploads it as
// the flat extent of a new disk in a build directory of its own below dir,
// then marks dir ready naming that disk.
func (c *Controller) buildImageDisk(ctx context.Context, img v1.Image, ref string, store *object.Datastore, ds, dir string) (builtDisk, error) {
	digest, err := img.Digest()
	if err != nil {
		return builtDisk{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	work, err := os.MkdirTemp(c.cfg.WorkDir, "vmimage-")
	if err != nil {
		return builtDisk{}, err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := rootfs.ExtractImage(img, root); err != nil {
		return builtDisk{}, fmt.Errorf("unpack %s: %w", ref, err)
	}
	used, err := duMiB(root)
	if err != nil {
		return builtDisk{}, err
	}
	sizeMiB := used + used/4 + c.cfg.BootDiskSlackMiB
	raw := filepath.Join(work, "root.ext4")
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, raw, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput(); err != nil {
		return builtDisk{}, fmt.Errorf("mkfs.ext4 for %s: %v: %s", ref, err, strings.TrimSpace(string(out)))
	}
	capacity := sizeMiB << 20
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return builtDisk{}, err
	}
	rel := "build-" + hex.EncodeToString(id[:]) + "/root.vmdk"
	build := path.Join(dir, path.Dir(rel))
	disk := fmt.Sprintf("[%s] %s/%s", ds, dir, rel)
	fm := object.NewFileManager(c.vc)
	if err := fm.MakeDirectory(ctx, fmt.Sprintf("[%s] %s", ds, build), c.dc, true); err != nil && !fault.Is(err, &types.FileAlreadyExists{}) {
		return builtDisk{}, fmt.Errorf("image directory: %w", err)
	}
	spec := &types.FileBackedVirtualDiskSpec{VirtualDiskSpec: types.VirtualDiskSpec{
		DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
		CapacityKb: capacity >> 10}
	t, err := object.NewVirtualDiskManager(c.vc).CreateVirtualDisk(ctx, disk, c.dc, spec)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return builtDisk{}, fmt.Errorf("create image disk %s: %w", disk, err)
	}
	// The disk holds the filesystem: its flat extent is written through
	// the datastore file API (as image-cache writes layer disks).
	p := soap.DefaultUpload
	if err := store.UploadFile(ctx, raw, build+"/root-flat.vmdk", &p); err != nil {
		return builtDisk{}, fmt.Errorf("upload image disk %s: %w", disk, err)
	}
	marker := filepath.Join(work, readyMarker)
	if err := os.WriteFile(marker, []byte(fmt.Sprintf("%s\n%d\n%s\n", digest, capacity, rel)), 0o600); err != nil {
		return builtDisk{}, err
	}
	if err := store.UploadFile(ctx, marker, dir+"/"+readyMarker, &p); err != nil {
		return builtDisk{}, fmt.Errorf("mark image disk %s ready: %w", disk, err)
	}
	c.log.Info("image disk built", "image", ref, "digest", digest.String(), "disk", disk, "mib", sizeMiB)
	return builtDisk{disk: disk, size: capacity}, nil
}

// builtRE is the disk a ready marker names, relative to its directory; a
// marker read while it was being written names none and reads as absent.
var builtRE = regexp.MustCompile(`^build-[0-9a-f]{16}/root\.vmdk$`)

// built reads the ready marker of an image disk directory: the digest,
// the capacity and the finished disk's path below dir (markers written
// before build directories existed name none: the disk is dir/root.vmdk).
func (c *Controller) built(ctx context.Context, store *object.Datastore, ds, dir string) (builtDisk, bool) {
	rc, _, err := store.Download(ctx, dir+"/"+readyMarker, &soap.DefaultDownload)
	if err != nil {
		return builtDisk{}, false
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 4096))
	if err != nil {
		return builtDisk{}, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 || len(f) > 3 {
		return builtDisk{}, false
	}
	size, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || size <= 0 {
		return builtDisk{}, false
	}
	rel := "root.vmdk"
	if len(f) == 3 {
		if !builtRE.MatchString(f[2]) {
			return builtDisk{}, false
		}
		rel = f[2]
	}
	return builtDisk{disk: fmt.Sprintf("[%s] %s/%s", ds, dir, rel), size: size}, true
}

// duMiB is the size of a tree in MiB, rounded up, with room for the
// filesystem's metadata.
func duMiB(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil {
			total += (info.Size() + 4095) / 4096 * 4096
		}
		return nil
	})
	return (total>>20 + 1), err
}
