package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// File names of the image in the output directory.
const (
	InitramfsFile = "initrd.img"
	KernelFile    = "vmlinuz"
	FlatFile      = "podvm-flat.vmdk"
	VMDKFile      = "podvm.vmdk"
	OVFFile       = "podvm.ovf"
	ManifestFile  = "podvm.mf"
)

// Result lists what Build wrote.
type Result struct {
	Dir                                string
	Kernel, Initramfs, Flat, VMDK, OVF string
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
		Flat: filepath.Join(dir, FlatFile), VMDK: filepath.Join(dir, VMDKFile), OVF: filepath.Join(dir, OVFFile)}
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
	if err := os.WriteFile(r.OVF, []byte(OVF(VMDKFile, DiskSize)), 0o644); err != nil {
		return nil, err
	}
	return r, nil
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

// Sum is the SHA-256 of a file, hex.
func Sum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
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
