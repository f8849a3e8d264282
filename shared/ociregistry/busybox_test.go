package ociregistry_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

func TestSeedBusyboxHoldsARunnableShell(t *testing.T) {
	privtest.RequireTools(t, "busybox")
	ctx := context.Background()
	reg, err := ociregistry.Start(ctx, ociregistry.Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	ref, err := ociregistry.SeedBusybox(ctx, reg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(mutate.Extract(img))
	got := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	bb, sh := got["bin/busybox"], got["bin/sh"]
	if bb == nil || bb.Mode&0o111 == 0 || bb.Size == 0 {
		t.Fatalf("bin/busybox = %+v, want an executable", bb)
	}
	if sh == nil || sh.Typeflag != tar.TypeSymlink || sh.Linkname != "busybox" {
		t.Fatalf("bin/sh = %+v, want a link to busybox", sh)
	}
	if got["etc/passwd"] == nil {
		t.Error("no etc/passwd")
	}
}
