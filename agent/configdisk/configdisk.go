package configdisk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Magic opens a configuration disk.
const Magic = "PODVISOR-CONFIG\n"

// Version is the format written by Write.
const Version = 1

// SectorSize is the unit of the disk: the header sector, and the padding of
// the payload.
const SectorSize = 512

// MaxPayload bounds what Read accepts: guestinfo values are small (a pod
// spec is a few KiB), so a larger length means a damaged header.
const MaxPayload = 16 << 20

// ErrNotConfigDisk is returned by Read for a device that does not start
// with Magic.
var ErrNotConfigDisk = errors.New("configdisk: not a configuration disk")

// Write writes a configuration disk holding values (guestinfo key → value)
// to w; the bytes are the same for the same values (keys are sorted by the
// JSON encoder), so images made from it are reproducible.
func Write(w io.Writer, values map[string]string) error {
	for k := range values {
		if !strings.HasPrefix(k, "guestinfo.") {
			return fmt.Errorf("configdisk: key %q: guestinfo keys start with \"guestinfo.\"", k)
		}
	}
	payload, err := json.Marshal(values)
	if err != nil {
		return fmt.Errorf("configdisk: encode: %w", err)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("configdisk: payload of %d bytes exceeds %d", len(payload), MaxPayload)
	}
	header := make([]byte, SectorSize)
	copy(header, fmt.Sprintf("%s%d\n%d\n", Magic, Version, len(payload)))
	pad := (SectorSize - len(payload)%SectorSize) % SectorSize
	for _, b := range [][]byte{header, payload, make([]byte, pad)} {
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("configdisk: write: %w", err)
		}
	}
	return nil
}

// Bytes is Write into memory.
func Bytes(values map[string]string) ([]byte, error) {
	var b bytes.Buffer
	err := Write(&b, values)
	return b.Bytes(), err
}

// Read reads the values of a configuration disk from r (a block device or
// an image file). It returns ErrNotConfigDisk when r does not start with
// Magic.
func Read(r io.Reader) (map[string]string, error) {
	header := make([]byte, SectorSize)
	if _, err := io.ReadFull(r, header); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrNotConfigDisk
		}
		return nil, fmt.Errorf("configdisk: read header: %w", err)
	}
	if !bytes.HasPrefix(header, []byte(Magic)) {
		return nil, ErrNotConfigDisk
	}
	lines := strings.SplitN(string(header[len(Magic):]), "\n", 3)
	if len(lines) < 3 {
		return nil, errors.New("configdisk: header: version and length lines missing")
	}
	version, err := strconv.Atoi(lines[0])
	if err != nil || version != Version {
		return nil, fmt.Errorf("configdisk: header: version %q is not %d", lines[0], Version)
	}
	n, err := strconv.Atoi(lines[1])
	if err != nil || n < 0 || n > MaxPayload {
		return nil, fmt.Errorf("configdisk: header: length %q is not a number from 0 to %d", lines[1], MaxPayload)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, fmt.Errorf("configdisk: read payload of %d bytes: %w", n, err)
	}
	var values map[string]string
	if err := json.Unmarshal(payload, &values); err != nil {
		return nil, fmt.Errorf("configdisk: payload: %w", err)
	}
	return values, nil
}
