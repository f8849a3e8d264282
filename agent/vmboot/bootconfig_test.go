package vmboot

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/source"
)

func spec(t *testing.T) string {
	t.Helper()
	s, err := guestchannel.MarshalSpec(&guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: "u1", Namespace: "default", Name: "p", RestartPolicy: "Never",
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:a"},
		},
		Containers: []guestchannel.Container{{Name: "c", Chain: []string{"sha256:a"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCompose(t *testing.T) {
	sys, dev := sysfs(t, map[int][2]string{2: {"vmw_pvscsi", "pci0000:00/0000:00:15.0"}},
		map[string]string{"2:0:0:0": "sdb", "2:0:1:0": "sdc"})
	cases := []struct {
		name        string
		values      map[string]string
		vsock       bool
		wantChannel string
		wantUUID    string
	}{
		{"serial when there is no vsock", map[string]string{}, false, "serial:/dev/ttyS1", "dmi-uuid"},
		{"vsock to the host", map[string]string{}, true, "vsock:2:7040", "dmi-uuid"},
		{"guestinfo overrides", map[string]string{GuestinfoChannel: "serial:/dev/ttyS2", GuestinfoVMUUID: "inst-1"}, true, "serial:/dev/ttyS2", "inst-1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.values[guestchannel.GuestinfoSpec] = spec(t)
			bc, err := Compose(Env{Source: source.Values{From: "test", Map: tc.values}, HasVsock: tc.vsock,
				DMIUUID: "DMI-UUID\n", Sys: sys, Dev: dev, DiskTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if bc.Channel != tc.wantChannel || bc.VMUUID != tc.wantUUID {
				t.Fatalf("channel %q uuid %q, want %q %q", bc.Channel, bc.VMUUID, tc.wantChannel, tc.wantUUID)
			}
			if bc.Devices["scsi0:0"] != filepath.Join(dev, "sdb") || bc.Devices["scsi0:1"] != filepath.Join(dev, "sdc") {
				t.Fatalf("devices %v", bc.Devices)
			}
			var back guestchannel.PodSpec
			if err := json.Unmarshal(bc.Spec, &back); err != nil || back.UID != "u1" {
				t.Fatalf("spec carried as %s (%v)", bc.Spec, err)
			}
		})
	}
}

func TestComposeRefuses(t *testing.T) {
	sys, dev := sysfs(t, map[int][2]string{2: {"vmw_pvscsi", "pci0000:00/0000:00:15.0"}}, map[string]string{"2:0:0:0": "sdb"})
	for name, tc := range map[string]struct {
		values map[string]string
		want   string
	}{
		"no spec":      {map[string]string{}, "pod spec"},
		"bad spec":     {map[string]string{guestchannel.GuestinfoSpec: `{"version":1}`}, "uid: required"},
		"missing disk": {map[string]string{guestchannel.GuestinfoSpec: spec(t)}, "scsi0:1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Compose(Env{Source: source.Values{From: "test", Map: tc.values}, Sys: sys, Dev: dev, DiskTimeout: 100 * time.Millisecond})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
