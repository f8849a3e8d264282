package layerfs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/services/imagecache/layerfs"
)

// BenchmarkReadVsStage writes a 25 MiB layer (100 files of 256 KiB, half
// random, half text: one layer of the bench's image) as an erofs image
// both ways, straight from the tar (Read, Erofs) and staged then built
// with mkfs.erofs (Stage, Staged.Erofs), and reports both and their ratio:
//
//	go test -run '^$' -bench ReadVsStage -benchtime 5x ./services/imagecache/layerfs/
func BenchmarkReadVsStage(b *testing.B) {
	privtest.Require(b, "stages layers with owners")
	privtest.RequireTools(b, "mkfs.erofs")
	layer := benchLayer(b, 100, 256<<10)
	ctx := context.Background()
	var read, staged time.Duration
	for b.Loop() {
		start := time.Now()
		l, err := layerfs.Read(ctx, bytes.NewReader(layer), layerfs.Options{TempDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		img, err := l.Erofs("sha256:bench")
		if err != nil {
			b.Fatal(err)
		}
		read += time.Since(start)
		_ = img.Remove()

		start = time.Now()
		st, err := layerfs.Stage(ctx, bytes.NewReader(layer), layerfs.Options{TempDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		img, err = st.Erofs(ctx, "sha256:bench", layerfs.CompressionNone)
		if err != nil {
			b.Fatal(err)
		}
		staged += time.Since(start)
		_ = st.Remove()
		_ = img.Remove()
	}
	n := float64(b.N)
	b.ReportMetric(float64(read.Microseconds())/n/1000, "read-ms")
	b.ReportMetric(float64(staged.Microseconds())/n/1000, "stage+mkfs-ms")
	b.ReportMetric(float64(staged)/float64(read), "stage/read")
	b.ReportMetric(0, "ns/op")
}

func benchLayer(b *testing.B, files, size int) []byte {
	rng := rand.New(rand.NewPCG(1, 11))
	text := []byte(strings.Repeat("the quick brown fox jumps over the lazy dog; ", size/45+1))[:size/2]
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := make([]byte, size)
	for f := range files {
		for i := 0; i+8 <= size/2; i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				body[i+j] = byte(v >> (8 * j))
			}
		}
		copy(body[size/2:], text)
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("opt/f%04d", f), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}
