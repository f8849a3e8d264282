package configdisk

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	values := map[string]string{
		"guestinfo.podvisor.spec":    `{"version":1}`,
		"guestinfo.podvisor.channel": "serial:/dev/ttyS1",
	}
	b, err := Bytes(values)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%SectorSize != 0 {
		t.Fatalf("disk of %d bytes is not whole sectors", len(b))
	}
	again, _ := Bytes(values)
	if !bytes.Equal(b, again) {
		t.Fatal("the same values gave different disks")
	}
	// A device is larger than what was written: trailing zeros are ignored.
	got, err := Read(bytes.NewReader(append(b, make([]byte, 4096)...)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["guestinfo.podvisor.channel"] != "serial:/dev/ttyS1" || got["guestinfo.podvisor.spec"] != `{"version":1}` {
		t.Fatalf("read back %v", got)
	}
}

func TestReadRefuses(t *testing.T) {
	good, _ := Bytes(map[string]string{"guestinfo.a": "b"})
	cases := []struct {
		name string
		disk []byte
		want string
	}{
		{"empty device", nil, ErrNotConfigDisk.Error()},
		{"other filesystem", make([]byte, 4096), ErrNotConfigDisk.Error()},
		{"future version", []byte(strings.Replace(string(good), Magic+"1\n", Magic+"2\n", 1)), "version"},
		{"length beyond the device", []byte(strings.Replace(string(good), "\n19\n", "\n9999\n", 1)), "read payload"},
		{"payload not JSON", []byte(strings.Replace(string(good), `{"guestinfo.a":"b"}`, `{"guestinfo.a":"b"`+"x", 1)), "payload"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tc.disk))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := Read(bytes.NewReader(nil)); !errors.Is(err, ErrNotConfigDisk) {
		t.Fatalf("err = %v, want ErrNotConfigDisk", err)
	}
}

func TestWriteRefusesOtherKeys(t *testing.T) {
	if _, err := Bytes(map[string]string{"podvisor.spec": "x"}); err == nil || !strings.Contains(err.Error(), "podvisor.spec") {
		t.Fatalf("err = %v, want one naming the key", err)
	}
}
