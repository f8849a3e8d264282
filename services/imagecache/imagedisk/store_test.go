package imagedisk_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/imagecache/imagedisk"
	"github.com/podvisor/podvisor/shared/imagelocality"
)

func startStore(t *testing.T) *imagedisk.Store {
	t.Helper()
	m := simulator.VPX()
	m.Datastore = 2
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	s := m.Service.NewServer()
	t.Cleanup(func() { s.Close(); m.Remove() })
	ctx := context.Background()
	c, err := govmomi.NewClient(ctx, s.URL, true)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := find.NewFinder(c.Client).DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return imagedisk.New(c.Client, dc)
}

func chainID(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func TestChainLifecycle(t *testing.T) {
	st := startStore(t)
	ctx := context.Background()
	dss, err := st.Datastores(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dss) != 2 || len(dss[0].Hosts) == 0 || dss[0].FreeSpace <= 0 {
		t.Fatalf("Datastores = %+v, want 2 mounted datastores with free space", dss)
	}
	src, dst := dss[0].Name, dss[1].Name

	base := events.ChainRecord{ChainID: chainID('a'), Datastore: src, Disk: imagedisk.DiskPath(src, chainID('a')),
		Layer: chainID('1'), DiffID: chainID('a'), Depth: 1, Size: 1024}
	child := events.ChainRecord{ChainID: chainID('b'), Datastore: src, Disk: imagedisk.DiskPath(src, chainID('b')),
		Parent: base.ChainID, ParentDisk: base.Disk, Layer: chainID('2'), DiffID: chainID('c'), Depth: 2, Size: 512}
	for _, rec := range []events.ChainRecord{base, child} {
		if err := st.Begin(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	// Only base is finished; child has no disk, as if its puller crashed.
	flat := bytes.Repeat([]byte{1}, int(base.Size))
	if err := st.WriteDisk(ctx, base, imagedisk.FSErofs, bytes.NewReader(flat), base.Size); err != nil {
		t.Fatal(err)
	}
	if err := st.WriteDisk(ctx, child, imagedisk.FSErofs, bytes.NewReader(flat[:100]), 100); err == nil {
		t.Fatal("a flat extent of 100 bytes (not whole sectors) was accepted")
	}
	man := imagelocality.Manifest{Digest: chainID('f'), Image: "reg/img:1", Layers: []imagelocality.Layer{{ChainID: base.ChainID, Size: 5}}}
	if err := st.WriteManifest(ctx, src, man); err != nil {
		t.Fatal(err)
	}

	ready, partial, manifests, err := st.Scan(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	want := base
	want.State = events.ChainStateReady
	if len(ready) != 1 || ready[0] != want {
		t.Fatalf("ready = %+v, want only base as written: %+v", ready, want)
	}
	if len(partial) != 1 || partial[0].ChainID != child.ChainID {
		t.Fatalf("partial = %+v, want the unfinished child", partial)
	}
	if len(manifests) != 1 || manifests[0].Digest != man.Digest {
		t.Fatalf("manifests = %+v", manifests)
	}

	// Restarting a crashed chain clears what was there.
	if err := st.Begin(ctx, child); err != nil {
		t.Fatalf("Begin over a partial folder: %v", err)
	}
	if _, err := st.ReadDisk(ctx, src, child.ChainID); err == nil {
		t.Fatal("the crashed pull's folder has a disk")
	}

	copied, err := st.Copy(ctx, ready[0], dst)
	if err != nil {
		t.Fatal(err)
	}
	if copied.Datastore != dst || !strings.HasPrefix(copied.Disk, "["+dst+"] ") {
		t.Fatalf("copy = %+v, want it on %s", copied, dst)
	}
	rc, n, err := st.ReadFlat(ctx, dst, base.ChainID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if n != base.Size || !bytes.Equal(got, flat) {
		t.Fatalf("copied flat extent = %d bytes, want the source's %d", n, base.Size)
	}
	if rec, err := st.ReadDisk(ctx, dst, base.ChainID); err != nil || rec.Parent != "" || rec.Datastore != dst || rec.Size != base.Size {
		t.Fatalf("copied descriptor = %+v, %v", rec, err)
	}
	dready, _, _, err := st.Scan(ctx, dst)
	if err != nil || len(dready) != 1 {
		t.Fatalf("scan of copy destination = %+v, %v", dready, err)
	}

	if err := st.Delete(ctx, src, base.ChainID); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, src, base.ChainID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	ready, _, _, _ = st.Scan(ctx, src)
	if len(ready) != 0 {
		t.Fatalf("after delete ready = %+v", ready)
	}
}

// TestDescriptor: the descriptor names one flat extent of the disk's
// sectors and carries the chain's identity and parent in its ddb keys.
func TestDescriptor(t *testing.T) {
	rec := events.ChainRecord{ChainID: chainID('b'), Datastore: "ds", Disk: imagedisk.DiskPath("ds", chainID('b')),
		Parent: chainID('a'), ParentDisk: imagedisk.DiskPath("ds", chainID('a')), Layer: chainID('2'), DiffID: chainID('c'),
		Depth: 2, Size: 8192, State: events.ChainStateReady}
	b, err := imagedisk.Descriptor(rec, imagedisk.FSErofs, rec.Size)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`RW 16 VMFS "disk-flat.vmdk"`, `ddb.podvisor.parent = "` + chainID('a') + `"`,
		`ddb.podvisor.chainID = "` + chainID('b') + `"`, `ddb.podvisor.fs = "erofs"`, `ddb.podvisor.diffID = "` + chainID('c') + `"`,
		`ddb.podvisor.digest = "` + chainID('2') + `"`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("descriptor lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "parentFileNameHint") {
		t.Fatalf("descriptor names a block-level parent:\n%s", b)
	}
	got, err := imagedisk.ParseDescriptor(b, "ds")
	if err != nil || got != rec {
		t.Fatalf("parsed %+v, %v; want %+v", got, err, rec)
	}
	if _, err := imagedisk.Descriptor(rec, imagedisk.FSErofs, 100); err == nil {
		t.Fatal("a disk of 100 bytes (not whole sectors) got a descriptor")
	}
}

func TestUnknownDatastoreRefused(t *testing.T) {
	st := startStore(t)
	err := st.Begin(context.Background(), events.ChainRecord{ChainID: chainID('a'), Datastore: "no-such-ds"})
	if !errors.Is(err, imagedisk.ErrUnknownDatastore) || !strings.Contains(err.Error(), "no-such-ds") {
		t.Fatalf("err = %v, want ErrUnknownDatastore naming the datastore", err)
	}
}
