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
	imagelocality "github.com/podvisor/podvisor/shared/imagemeta"
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
		Blob: imagedisk.BlobPath(src, chainID('a')), Layer: chainID('1'), DiffID: chainID('a'), Depth: 1, Size: 5}
	child := events.ChainRecord{ChainID: chainID('b'), Datastore: src, Disk: imagedisk.DiskPath(src, chainID('b')),
		Blob: imagedisk.BlobPath(src, chainID('b')), Parent: base.ChainID, ParentDisk: base.Disk, Layer: chainID('2'),
		DiffID: chainID('c'), Depth: 2, Size: 3}
	for _, rec := range []events.ChainRecord{base, child} {
		if err := st.Begin(ctx, rec); err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte{byte(rec.Depth)}, int(rec.Size))
		if err := st.UploadBlob(ctx, src, rec.ChainID, bytes.NewReader(data), rec.Size); err != nil {
			t.Fatal(err)
		}
		if err := st.CreateDisk(ctx, src, rec.ChainID, 10<<20); err != nil {
			t.Fatal(err)
		}
	}
	// Only base is finished; child stays "pulling" as if its puller crashed.
	base.State = events.ChainStateReady
	if err := st.WriteMeta(ctx, base); err != nil {
		t.Fatal(err)
	}
	man := imagelocality.Manifest{Digest: chainID('f'), Image: "reg/img:1", Layers: []imagelocality.Layer{{ChainID: base.ChainID, Size: 5}}}
	if err := st.WriteManifest(ctx, src, man); err != nil {
		t.Fatal(err)
	}

	ready, partial, manifests, err := st.Scan(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(ready) != 1 || ready[0].ChainID != base.ChainID || ready[0].Disk != base.Disk {
		t.Fatalf("ready = %+v, want only base", ready)
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
	if _, _, err := st.ReadBlob(ctx, src, child.ChainID); err == nil {
		t.Fatal("blob of the crashed pull survived Begin")
	}

	copied, err := st.Copy(ctx, ready[0], dst)
	if err != nil {
		t.Fatal(err)
	}
	if copied.Datastore != dst || !strings.HasPrefix(copied.Disk, "["+dst+"] ") {
		t.Fatalf("copy = %+v, want it on %s", copied, dst)
	}
	rc, n, err := st.ReadBlob(ctx, dst, base.ChainID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if n != 5 || !bytes.Equal(got, bytes.Repeat([]byte{1}, 5)) {
		t.Fatalf("copied blob = %v (%d bytes), want the source bytes", got, n)
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

func TestUnknownDatastoreRefused(t *testing.T) {
	st := startStore(t)
	err := st.Begin(context.Background(), events.ChainRecord{ChainID: chainID('a'), Datastore: "no-such-ds"})
	if !errors.Is(err, imagedisk.ErrUnknownDatastore) || !strings.Contains(err.Error(), "no-such-ds") {
		t.Fatalf("err = %v, want ErrUnknownDatastore naming the datastore", err)
	}
}
