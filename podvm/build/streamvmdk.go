package build

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// streamOptimized VMDK (VMware Virtual Disk Format 1.1, "stream-optimized
// compressed sparse extent"): the only disk form an OVA may carry for
// vSphere to import. A header, the embedded descriptor, then each non-zero
// 64 KiB grain deflated behind a marker, then the grain tables, the grain
// directory, a footer (the header again, with the directory's offset) and
// an end-of-stream marker.
const (
	sector         = 512
	grainSectors   = 128 // 64 KiB
	gtEntries      = 512
	markerEOS      = 0
	markerGT       = 1
	markerGD       = 2
	markerFooter   = 3
	descSectors    = 2
	headerSectors  = 1 + descSectors
	gdAtEnd        = ^uint64(0)
	flagNewline    = 1 << 0
	flagCompressed = 1 << 16
	flagMarkers    = 1 << 17
)

type sparseHeader struct {
	Magic              uint32
	Version            uint32
	Flags              uint32
	Capacity           uint64
	GrainSize          uint64
	DescriptorOffset   uint64
	DescriptorSize     uint64
	NumGTEsPerGT       uint32
	RGDOffset          uint64
	GDOffset           uint64
	OverHead           uint64
	UncleanShutdown    uint8
	SingleEndLineChar  byte
	NonEndLineChar     byte
	DoubleEndLineChar1 byte
	DoubleEndLineChar2 byte
	CompressAlgorithm  uint16
	Pad                [433]byte
}

// WriteStreamOptimized converts the raw disk src into a streamOptimized
// VMDK at dst.
func WriteStreamOptimized(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if st.Size()%(grainSectors*sector) != 0 {
		return fmt.Errorf("%s: %d bytes is not a whole number of 64 KiB grains", src, st.Size())
	}
	capacity := uint64(st.Size() / sector)
	grains := capacity / grainSectors
	numGTs := (grains + gtEntries - 1) / gtEntries

	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=70647669\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n"+
		"# Extent description\nRW %d SPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\n"+
		"ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n"+
		"ddb.virtualHWVersion = \"14\"\nddb.podvisor.role = \"boot\"\n", capacity, "podvm-stream.vmdk", capacity/(255*63))
	if len(desc) > descSectors*sector {
		return fmt.Errorf("descriptor of %d bytes exceeds %d sectors", len(desc), descSectors)
	}
	hdr := sparseHeader{
		Magic: 0x564d444b, Version: 3, Flags: flagNewline | flagCompressed | flagMarkers,
		Capacity: capacity, GrainSize: grainSectors, DescriptorOffset: 1, DescriptorSize: descSectors,
		NumGTEsPerGT: gtEntries, GDOffset: gdAtEnd, OverHead: headerSectors,
		SingleEndLineChar: '\n', NonEndLineChar: ' ', DoubleEndLineChar1: '\r', DoubleEndLineChar2: '\n',
		CompressAlgorithm: 1,
	}

	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	w := &sectorWriter{w: out}
	w.write(hdr)
	d := make([]byte, descSectors*sector)
	copy(d, desc)
	w.raw(d)

	gt := make([]uint32, numGTs*gtEntries)
	grain := make([]byte, grainSectors*sector)
	var z bytes.Buffer
	for g := uint64(0); g < grains && w.err == nil; g++ {
		if _, err := io.ReadFull(in, grain); err != nil {
			w.err = err
			break
		}
		if allZero(grain) {
			continue
		}
		z.Reset()
		zw, _ := zlib.NewWriterLevel(&z, zlib.BestSpeed)
		zw.Write(grain)
		zw.Close()
		gt[g] = uint32(w.sector())
		marker := make([]byte, 12+z.Len())
		binary.LittleEndian.PutUint64(marker, g*grainSectors)
		binary.LittleEndian.PutUint32(marker[8:], uint32(z.Len()))
		copy(marker[12:], z.Bytes())
		w.raw(marker)
	}
	gd := make([]uint32, numGTs)
	for i := uint64(0); i < numGTs; i++ {
		w.meta(gtEntries*4/sector, markerGT)
		gd[i] = uint32(w.sector())
		w.write(gt[i*gtEntries : (i+1)*gtEntries])
	}
	w.meta(uint64((len(gd)*4+sector-1)/sector), markerGD)
	hdr.GDOffset = w.sector()
	w.write(gd)
	w.meta(1, markerFooter)
	w.write(hdr)
	w.raw(make([]byte, sector)) // end of stream
	if cerr := out.Close(); w.err == nil {
		w.err = cerr
	}
	if w.err != nil {
		return fmt.Errorf("streamOptimized VMDK %s: %w", dst, w.err)
	}
	return nil
}

// sectorWriter writes whole sectors and counts them.
type sectorWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (s *sectorWriter) sector() uint64 { return uint64(s.n / sector) }

func (s *sectorWriter) raw(b []byte) {
	if s.err != nil {
		return
	}
	if pad := (sector - len(b)%sector) % sector; pad > 0 {
		b = append(b, make([]byte, pad)...)
	}
	_, s.err = s.w.Write(b)
	s.n += int64(len(b))
}

func (s *sectorWriter) write(v any) {
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, v); err != nil {
		s.err = err
		return
	}
	s.raw(b.Bytes())
}

// meta writes a metadata marker: the sectors of data that follow, and its
// type.
func (s *sectorWriter) meta(sectors uint64, typ uint32) {
	m := make([]byte, sector)
	binary.LittleEndian.PutUint64(m, sectors)
	binary.LittleEndian.PutUint32(m[12:], typ)
	s.raw(m)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
