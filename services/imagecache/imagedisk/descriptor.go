package imagedisk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/vmdk"

	"github.com/podvisor/podvisor/events"
)

// SectorSize is the unit of a disk's extent.
const SectorSize = vmdk.SectorSize

// FSErofs is the filesystem of the image disks (ddb.podvisor.fs).
const FSErofs = events.ImageDiskFS

// Keys of the descriptor's disk database (written as ddb.<key>). They are
// not vSphere's parentFileNameHint: an image disk is no block-level delta of
// its parent but a filesystem of its own, which the guest stacks on its
// parent's with overlayfs (top first).
const (
	KeyChainID = "podvisor.chainID" // the OCI chainID of the prefix the disk ends
	KeyParent  = "podvisor.parent"  // the parent's chainID; absent for a base layer
	KeyDiffID  = "podvisor.diffID"  // the layer's uncompressed digest
	KeyDigest  = "podvisor.digest"  // the layer's compressed digest, as the registry serves it
	KeyFS      = "podvisor.fs"      // the flat extent's filesystem ("erofs")
	KeyDepth   = "podvisor.depth"   // layers in the prefix
	KeyCreated = "podvisor.created" // RFC 3339
)

// Descriptor is the VMDK descriptor of a chain's disk: one flat extent of
// size bytes (the filesystem image, mounted as the device is) and the
// chain's identity in the disk database.
func Descriptor(rec events.ChainRecord, fs string, size int64) ([]byte, error) {
	if size%SectorSize != 0 {
		return nil, fmt.Errorf("disk %s: %d bytes is not whole sectors", rec.Disk, size)
	}
	sectors := size / SectorSize
	d := vmdk.NewDescriptor(vmdk.Extent{Size: sectors, Info: FlatFile})
	// CID identifies the content; derived from the chainID so that the
	// same chain has the same descriptor on every datastore.
	sum := sha256.Sum256([]byte(rec.ChainID))
	d.CID = vmdk.DiskContentID(binary.BigEndian.Uint32(sum[:4]))
	d.ParentCID = 0xffffffff
	cyl := max(sectors/(255*63), 1)
	d.DDB["adapterType"] = "lsilogic"
	d.DDB["geometry.cylinders"] = strconv.FormatInt(cyl, 10)
	d.DDB["geometry.heads"] = "255"
	d.DDB["geometry.sectors"] = "63"
	d.DDB["virtualHWVersion"] = "4"
	d.DDB[KeyChainID] = rec.ChainID
	if rec.Parent != "" {
		d.DDB[KeyParent] = rec.Parent
	}
	d.DDB[KeyDiffID] = rec.DiffID
	d.DDB[KeyDigest] = rec.Layer
	d.DDB[KeyFS] = fs
	d.DDB[KeyDepth] = strconv.Itoa(rec.Depth)
	if !rec.CreatedAt.IsZero() {
		d.DDB[KeyCreated] = rec.CreatedAt.UTC().Format(time.RFC3339Nano)
	}
	for k, v := range d.DDB {
		if strings.ContainsAny(v, "\"\n") {
			return nil, fmt.Errorf("disk %s: ddb.%s %q has a quote or newline", rec.Disk, k, v)
		}
	}
	var b bytes.Buffer
	if err := d.Write(&b); err != nil {
		return nil, fmt.Errorf("disk %s: descriptor: %w", rec.Disk, err)
	}
	return b.Bytes(), nil
}

// ParseDescriptor reads a chain's record back from its descriptor on
// datastore ds: what the rebuild after a Redis loss knows of the chain.
func ParseDescriptor(b []byte, ds string) (events.ChainRecord, error) {
	d, err := vmdk.ParseDescriptor(bytes.NewReader(b))
	if err != nil {
		return events.ChainRecord{}, fmt.Errorf("parse disk descriptor: %w", err)
	}
	id := d.DDB[KeyChainID]
	if id == "" || len(d.Extent) != 1 || d.Extent[0].Info != FlatFile {
		return events.ChainRecord{}, fmt.Errorf("not an image disk descriptor (no ddb.%s or not one flat extent)", KeyChainID)
	}
	rec := events.ChainRecord{
		ChainID:   id,
		Datastore: ds,
		Disk:      DiskPath(ds, id),
		Parent:    d.DDB[KeyParent],
		Layer:     d.DDB[KeyDigest],
		DiffID:    d.DDB[KeyDiffID],
		Size:      d.Extent[0].Size * SectorSize,
		State:     events.ChainStateReady,
	}
	if rec.Parent != "" {
		rec.ParentDisk = DiskPath(ds, rec.Parent)
	}
	rec.Depth, _ = strconv.Atoi(d.DDB[KeyDepth])
	if t, err := time.Parse(time.RFC3339Nano, d.DDB[KeyCreated]); err == nil {
		rec.CreatedAt = t
	}
	if d.DDB[KeyFS] != FSErofs {
		return rec, fmt.Errorf("image disk %s: filesystem %q, want %q", rec.Disk, d.DDB[KeyFS], FSErofs)
	}
	return rec, nil
}
