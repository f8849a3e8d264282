package nativevm

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// emptyBootDiskBytes is the boot disk of an image without an OCI root
// filesystem (a content library template's OS is not unpacked here): an
// empty disk a real VM's installer or template fills.
const emptyBootDiskBytes = 1 << 30

// readyMarker is written beside an image disk once its bytes are complete,
// so that a build interrupted half-way is redone rather than booted.
const readyMarker = "ready"

// bootDisk returns the VM's own boot disk (its datastore path), copying it
// from the image's disk; the returned capacity is the disk's size.
func (c *Controller) bootDisk(ctx context.Context, rec *events.VMRecord, ds, vmName string) (string, int64, error) {
	dst := fmt.Sprintf("[%s] %s/root.vmdk", ds, vmName)
	dc := c.dc
	fm := object.NewFileManager(c.vc)
	if err := fm.MakeDirectory(ctx, fmt.Sprintf("[%s] %s", ds, vmName), dc, true); err != nil && !fault.Is(err, &types.FileAlreadyExists{}) {
		return "", 0, fmt.Errorf("VM directory: %w", err)
	}
	vdm := object.NewVirtualDiskManager(c.vc)
	// A copy left by an attempt that failed before the VM existed is
	// replaced: the VM boots from a fresh copy of its image.
	if t, err := vdm.DeleteVirtualDisk(ctx, dst, dc); err == nil {
		_ = t.Wait(ctx)
	}
	if rec.Image.OCI == "" {
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
	src, capacity, err := c.imageDisk(ctx, rec.Image.OCI, ds)
	if err != nil {
		return "", 0, err
	}
	t, err := vdm.CopyVirtualDisk(ctx, src, dc, dst, dc, nil, false)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return "", 0, fmt.Errorf("copy image disk %s to %s: %w", src, dst, err)
	}
	return dst, capacity, nil
}

// imageDisk returns the image's disk on datastore ds, building it once per
// image digest: the flattened root filesystem as ext4 in the flat extent.
func (c *Controller) imageDisk(ctx context.Context, ref, ds string) (string, int64, error) {
	var opts []name.Option
	if r, err := name.ParseReference(ref); err == nil && slices.Contains(c.cfg.InsecureRegistries, r.Context().RegistryStr()) {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return "", 0, bus.Permanent(fmt.Errorf("image %q: %w", ref, err))
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(c.pull))
	if err != nil {
		return "", 0, fmt.Errorf("pull %s: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return "", 0, fmt.Errorf("pull %s: %w", ref, err)
	}
	dir := path.Join(c.cfg.ImageRoot, digest.Hex[:16])
	disk := fmt.Sprintf("[%s] %s/root.vmdk", ds, dir)
	store, err := find.NewFinder(c.vc).SetDatacenter(c.dc).Datastore(ctx, ds)
	if err != nil {
		return "", 0, fmt.Errorf("datastore %s: %w", ds, err)
	}
	if size, ok := c.builtSize(ctx, store, dir); ok {
		return disk, size, nil
	}
	work, err := os.MkdirTemp(c.cfg.WorkDir, "vmimage-")
	if err != nil {
		return "", 0, err
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	rc := mutate.Extract(img)
	err = extract(rc, root)
	rc.Close()
	if err != nil {
		return "", 0, fmt.Errorf("unpack %s: %w", ref, err)
	}
	used, err := duMiB(root)
	if err != nil {
		return "", 0, err
	}
	sizeMiB := used + used/4 + c.cfg.BootDiskSlackMiB
	raw := filepath.Join(work, "root.ext4")
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, raw, fmt.Sprintf("%dM", sizeMiB)).CombinedOutput(); err != nil {
		return "", 0, fmt.Errorf("mkfs.ext4 for %s: %v: %s", ref, err, strings.TrimSpace(string(out)))
	}
	capacity := sizeMiB << 20
	fm := object.NewFileManager(c.vc)
	if err := fm.MakeDirectory(ctx, fmt.Sprintf("[%s] %s", ds, dir), c.dc, true); err != nil && !fault.Is(err, &types.FileAlreadyExists{}) {
		return "", 0, fmt.Errorf("image directory: %w", err)
	}
	vdm := object.NewVirtualDiskManager(c.vc)
	if t, err := vdm.DeleteVirtualDisk(ctx, disk, c.dc); err == nil {
		_ = t.Wait(ctx)
	}
	spec := &types.FileBackedVirtualDiskSpec{VirtualDiskSpec: types.VirtualDiskSpec{
		DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)},
		CapacityKb: capacity >> 10}
	t, err := vdm.CreateVirtualDisk(ctx, disk, c.dc, spec)
	if err == nil {
		err = t.Wait(ctx)
	}
	if err != nil {
		return "", 0, fmt.Errorf("create image disk %s: %w", disk, err)
	}
	// The disk holds the filesystem: its flat extent is written through
	// the datastore file API (as image-cache writes layer disks).
	p := soap.DefaultUpload
	if err := store.UploadFile(ctx, raw, dir+"/root-flat.vmdk", &p); err != nil {
		return "", 0, fmt.Errorf("upload image disk %s: %w", disk, err)
	}
	marker := filepath.Join(work, readyMarker)
	if err := os.WriteFile(marker, []byte(fmt.Sprintf("%s\n%d\n", digest, capacity)), 0o600); err != nil {
		return "", 0, err
	}
	if err := store.UploadFile(ctx, marker, dir+"/"+readyMarker, &p); err != nil {
		return "", 0, fmt.Errorf("mark image disk %s ready: %w", disk, err)
	}
	c.log.Info("image disk built", "image", ref, "digest", digest.String(), "disk", disk, "mib", sizeMiB)
	return disk, capacity, nil
}

// builtSize reads the ready marker of an image disk directory.
func (c *Controller) builtSize(ctx context.Context, store *object.Datastore, dir string) (int64, bool) {
	rc, _, err := store.Download(ctx, dir+"/"+readyMarker, &soap.DefaultDownload)
	if err != nil {
		return 0, false
	}
	defer rc.Close()
	var digest string
	var size int64
	if _, err := fmt.Fscan(rc, &digest, &size); err != nil || size <= 0 {
		return 0, false
	}
	return size, true
}

// extract writes a flattened image filesystem (mutate.Extract: whiteouts
// already applied) under dir, refusing entries that would leave it.
func extract(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		clean := path.Clean("/" + h.Name)
		if clean == "/" {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(clean))
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, mode|0o700); err != nil {
				return err
			}
			_ = os.Chmod(target, mode)
		case tar.TypeReg:
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			_ = os.Chmod(target, mode)
		case tar.TypeSymlink:
			_ = os.Remove(target)
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.FromSlash(path.Clean("/"+h.Linkname)))
			_ = os.Remove(target)
			if err := os.Link(src, target); err != nil {
				return err
			}
		default:
			// Devices and FIFOs are made by the guest's own /dev.
			continue
		}
		if os.Geteuid() == 0 {
			_ = os.Lchown(target, h.Uid, h.Gid)
		}
	}
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
