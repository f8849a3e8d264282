package ociregistry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// BusyboxPath is where Debian's busybox-static installs its one binary.
const BusyboxPath = "/bin/busybox"

// BusyboxRepoTag is the sample image that holds a program: busybox and the
// applets a tour or a test runs (sh, echo, cat, sleep, httpd, wget, ...).
const BusyboxRepoTag = "podvisor/busybox:1.0"

// busyboxApplets are linked to busybox in the image's /bin.
var busyboxApplets = []string{"sh", "echo", "cat", "ls", "sleep", "env", "httpd", "wget", "nc", "ps", "kill", "true", "false", "tail", "head", "date", "hostname", "id", "mkdir", "rm", "touch", "timeout", "nslookup"}

// SeedBusybox pushes BusyboxRepoTag, built from the busybox binary at
// BusyboxPath, and returns its reference. The other sample images hold data
// only (they exercise pulls and disk chains); this one runs. It returns
// fs.ErrNotExist when busybox is not installed.
func SeedBusybox(ctx context.Context, addr string, opts ...remote.Option) (string, error) {
	layer, err := BusyboxLayer(busyboxApplets, nil)
	if err != nil {
		return "", fmt.Errorf("busybox image: %w", err)
	}
	ref := addr + "/" + BusyboxRepoTag
	if _, err := PushWith(ctx, ref, opts, layer); err != nil {
		return "", err
	}
	return ref, nil
}

// File is a regular file an image built here holds.
type File struct {
	// Path inside the image, without a leading slash.
	Path string
	Mode int64
	Body []byte
}

// BusyboxLayer builds one layer: busybox from BusyboxPath in /bin with the
// applets linked to it, a minimal /etc/passwd and /etc/group, and files.
// It returns fs.ErrNotExist (wrapped) when busybox is not installed.
func BusyboxLayer(applets []string, files []File) (v1.Layer, error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, err
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	mtime := time.Unix(0, 0)
	add := func(h *tar.Header, body []byte) error {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
	group := []byte("root:x:0:\nnogroup:x:65534:\n")
	entries := []struct {
		h    tar.Header
		body []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil},
		{tar.Header{Name: "root/", Typeflag: tar.TypeDir, Mode: 0o700}, nil},
		{tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))}, bin},
		{tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(passwd))}, passwd},
		{tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(group))}, group},
	}
	dirs := map[string]bool{"bin": true, "etc": true, "tmp": true, "root": true}
	for _, f := range files {
		// Parent directories first, outermost first, each once.
		var parents []string
		for d := path.Dir(f.Path); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for _, d := range slices.Backward(parents) {
			entries = append(entries, struct {
				h    tar.Header
				body []byte
			}{tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil})
		}
		entries = append(entries, struct {
			h    tar.Header
			body []byte
		}{tar.Header{Name: f.Path, Typeflag: tar.TypeReg, Mode: f.Mode, Size: int64(len(f.Body))}, f.Body})
	}
	for _, e := range entries {
		if err := add(&e.h, e.body); err != nil {
			return nil, err
		}
	}
	for _, a := range applets {
		if err := add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return gzipLayer(tarBuf.Bytes(), gzip.DefaultCompression)
}

// IsMissing reports whether SeedBusybox failed because busybox is not
// installed (not an error for a caller that seeds it only when it can).
func IsMissing(err error) bool { return errors.Is(err, fs.ErrNotExist) }
