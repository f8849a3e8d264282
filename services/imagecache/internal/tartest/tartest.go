// Package tartest writes the tar streams the image cache's tests feed to
// it: layer diffs (a layer's tar stream once its blob is decompressed, the
// stream its diff ID digests), extended attributes carried as PAX records
// the way OCI layers carry them.
package tartest

import (
	"archive/tar"
	"bytes"
	"testing"
)

// Entry is one entry of a stream: its header and the contents written after
// it (a regular file's; empty for the others).
type Entry struct {
	Header tar.Header
	Body   string
	// Xattrs become the header's SCHILY.xattr.<name> PAX records.
	Xattrs map[string]string
}

// Tar returns the stream of es in order; a write that fails stops t.
func Tar(t testing.TB, es ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.Header
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.Body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
