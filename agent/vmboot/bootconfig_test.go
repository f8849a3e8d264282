package vmboot

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/configdisk"
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

// A VM booted from a configuration disk names it for the agent to read
// again; Reread gives the spec and uuid the disk says now, on the devices
// found at boot, and refuses a spec with a disk the VM does not have.
func TestRereadAfterTheDiskChanged(t *testing.T) {
	sys, dev := sysfs(t, map[int][2]string{2: {"vmw_pvscsi", "pci0000:00/0000:00:15.0"}},
		map[string]string{"2:0:0:0": "sdb", "2:0:1:0": "sdc"})
	disk := filepath.Join(t.TempDir(), "config.img")
	write := func(values map[string]string) {
		b, err := configdisk.Bytes(values)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(disk, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(map[string]string{guestchannel.GuestinfoSpec: spec(t), GuestinfoVMUUID: "parent"})
	bc, err := Compose(Env{Source: source.Values{From: "disk", Map: map[string]string{guestchannel.GuestinfoSpec: spec(t), GuestinfoVMUUID: "parent"}, Device: disk},
		DMIUUID: "dmi", Sys: sys, Dev: dev, DiskTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if bc.Watch != "configdisk:"+disk {
		t.Fatalf("watch %q, want the configuration disk", bc.Watch)
	}
	child := strings.Replace(spec(t), `"uid":"u1"`, `"uid":"u2"`, 1)
	write(map[string]string{guestchannel.GuestinfoSpec: child})
	next, s, err := Reread(*bc)
	if err != nil {
		t.Fatal(err)
	}
	if s.UID != "u2" || next.VMUUID != "" || next.Devices["scsi0:1"] != bc.Devices["scsi0:1"] || next.Channel != bc.Channel || next.Watch != bc.Watch {
		t.Fatalf("reread: uid %q uuid %q devices %v channel %q watch %q; want the child's spec, no uuid (not the parent's), the same hardware",
			s.UID, next.VMUUID, next.Devices, next.Channel, next.Watch)
	}
	extra := strings.Replace(child, `"unit":"scsi0:1"`, `"unit":"scsi0:7"`, 1)
	write(map[string]string{guestchannel.GuestinfoSpec: extra})
	if _, _, err := Reread(*bc); err == nil || !strings.Contains(err.Error(), "scsi0:7") || !errors.Is(err, ErrSpecRefused) {
		t.Fatalf("a spec with a disk the VM lacks: err = %v, want it named, and the spec refused", err)
	}
	// What the source holds is refused; a source that cannot be read says
	// nothing of the spec.
	for name, values := range map[string]map[string]string{
		"no spec":          {GuestinfoVMUUID: "child"},
		"not a pod spec":   {guestchannel.GuestinfoSpec: `{"uid":`},
		"an unknown field": {guestchannel.GuestinfoSpec: strings.Replace(child, `"uid":"u2"`, `"uid":"u2","colour":"red"`, 1)},
	} {
		write(values)
		if _, _, err := Reread(*bc); !errors.Is(err, ErrSpecRefused) {
			t.Errorf("%s: err = %v, want the spec refused", name, err)
		}
	}
	if err := os.Remove(disk); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Reread(*bc); err == nil || errors.Is(err, ErrSpecRefused) {
		t.Fatalf("the disk gone: err = %v, want an error of the source, not a refused spec", err)
	}
}
