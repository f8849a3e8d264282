package sim_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/podvisor/podvisor/shared/sim"
)

// A restarted all-in-one must find what it stored on the datastores.
func TestKeepDataOutlivesTheSimulator(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	start := func() (*sim.Datacenter, *object.Datastore) {
		t.Helper()
		d, err := sim.Start(ctx, sim.Config{Clusters: 1, HostsPerCluster: 2, Dir: dir, KeepData: true})
		if err != nil {
			t.Fatal(err)
		}
		c, err := d.Client(ctx)
		if err != nil {
			d.Close()
			t.Fatal(err)
		}
		spec, err := d.Datastore(sim.SharedDatastore)
		if err != nil {
			d.Close()
			t.Fatal(err)
		}
		return d, object.NewDatastore(c.Client, spec.Ref)
	}

	d, ds := start()
	if err := ds.Upload(ctx, strings.NewReader("layer bytes"), "images/l1.tar", &soap.DefaultUpload); err != nil {
		d.Close()
		t.Fatalf("upload: %v", err)
	}
	d.Close()
	if _, err := os.Stat(filepath.Join(dir, sim.SharedDatastore, "images", "l1.tar")); err != nil {
		t.Fatalf("after Close the file is gone: %v", err)
	}

	d, ds = start()
	defer d.Close()
	rc, _, err := ds.Download(ctx, "images/l1.tar", &soap.DefaultDownload)
	if err != nil {
		t.Fatalf("download after restart: %v", err)
	}
	defer rc.Close()
	got, _ := io.ReadAll(rc)
	if !bytes.Equal(got, []byte("layer bytes")) {
		t.Fatalf("after restart the datastore holds %q, want the uploaded bytes", got)
	}
}
