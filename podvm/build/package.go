package build

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// File names of the image in the output directory.
const (
	InitramfsFile = "initrd.img"
	KernelFile    = "vmlinuz"
	FlatFile      = "podvm-flat.vmdk"
	VMDKFile      = "podvm.vmdk"
	OVFFile       = "podvm.ovf"
	StreamFile    = "podvm-stream.vmdk"
	OVAFile       = "podvm.ova"
)

// Result lists what Build wrote.
type Result struct {
	Dir                                     string
	Kernel, Initramfs, Flat, VMDK, OVF, OVA string
}

// Build writes the whole image into dir.
func Build(c Config, dir string) (*Result, error) {
	if err := c.Defaults(); err != nil {
		return nil, fmt.Errorf("pod VM image: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &Result{Dir: dir, Kernel: filepath.Join(dir, KernelFile), Initramfs: filepath.Join(dir, InitramfsFile),
		Flat: filepath.Join(dir, FlatFile), VMDK: filepath.Join(dir, VMDKFile), OVF: filepath.Join(dir, OVFFile),
		OVA: filepath.Join(dir, OVAFile)}
	t, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("pod VM image: %w", err)
	}
	if err := writeAtomic(r.Initramfs, t.WriteInitramfs); err != nil {
		return nil, fmt.Errorf("pod VM image: initramfs: %w", err)
	}
	if err := writeAtomic(r.Kernel, func(w io.Writer) error { return copyInto(w, c.Kernel) }); err != nil {
		return nil, err
	}
	if err := c.BootDisk(r.Flat, r.Initramfs); err != nil {
		return nil, fmt.Errorf("pod VM image: %w", err)
	}
	if err := os.WriteFile(r.VMDK, []byte(Descriptor(FlatFile, DiskSize)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(r.OVF, []byte(OVF(VMDKFile, FormatFlat, DiskSize, DiskSize)), 0o644); err != nil {
		return nil, err
	}
	if err := writeAtomic(r.OVA, func(w io.Writer) error { return OVA(w, r.Flat) }); err != nil {
		return nil, fmt.Errorf("pod VM image: OVA: %w", err)
	}
	return r, nil
}

// OVA writes the OVA of the raw boot disk: a tar holding the OVF first (as
// the format requires), the manifest of SHA-256 digests, and the disk as a
// streamOptimized VMDK; headers carry no time or owner, so the bytes are
// reproducible.
func OVA(w io.Writer, flat string) error {
	tmp, err := os.MkdirTemp("", "podvm-ova-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	stream := filepath.Join(tmp, StreamFile)
	if err := WriteStreamOptimized(stream, flat); err != nil {
		return err
	}
	disk, err := os.ReadFile(stream)
	if err != nil {
		return err
	}
	ovf := []byte(OVF(StreamFile, FormatStream, int64(len(disk)), DiskSize))
	mf := []byte(fmt.Sprintf("SHA256(%s)= %x\nSHA256(%s)= %x\n", OVFFile, sha256.Sum256(ovf), StreamFile, sha256.Sum256(disk)))
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		body []byte
	}{{OVFFile, ovf}, {"podvm.mf", mf}, {StreamFile, disk}} {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Format: tar.FormatUSTAR, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(f.body); err != nil {
			return err
		}
	}
	return tw.Close()
}

// Descriptor is a monolithicFlat VMDK descriptor for a raw extent of size
// bytes: the form a vSphere datastore holds and the datastore file API
// uploads as two files.
func Descriptor(flat string, size int64) string {
	sectors := size / 512
	cylinders := sectors / (255 * 63)
	return fmt.Sprintf(`# Disk DescriptorFile
version=1
CID=70647669
parentCID=ffffffff
createType="vmfs"

# Extent description
RW %d VMFS "%s"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "%d"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.virtualHWVersion = "14"
ddb.podvisor.role = "boot"
`, sectors, flat, cylinders)
}

func copyInto(w io.Writer, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// writeAtomic writes p through a temporary file renamed into place.
func writeAtomic(p string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), p)
}
