package bootconfig

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

func spec() *guestchannel.PodSpec {
	return &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: "u", Name: "p", RestartPolicy: "Always",
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", ChainID: "sha256:a"},
		},
		Containers: []guestchannel.Container{{Name: "c", Chain: []string{"sha256:a"}}},
	}
}

func boot(t *testing.T, edit func(*guestchannel.BootConfig), specAsString bool) []byte {
	raw, err := guestchannel.MarshalSpec(spec())
	if err != nil {
		t.Fatal(err)
	}
	b := guestchannel.BootConfig{Channel: "unix:/c.sock", StateDir: "/s",
		Devices: map[string]string{"scsi0:0": "/d0", "scsi0:1": "/d1"}, Spec: json.RawMessage(raw)}
	if specAsString {
		quoted, _ := json.Marshal(raw)
		b.Spec = quoted
	}
	if edit != nil {
		edit(&b)
	}
	out, _ := json.Marshal(b)
	return out
}

func TestParse(t *testing.T) {
	for _, asString := range []bool{false, true} {
		c, err := Parse(boot(t, nil, asString))
		if err != nil {
			t.Fatalf("spec as string %v: %v", asString, err)
		}
		if c.Spec.UID != "u" || c.RestartBackoff() != 10*time.Second || c.MaxRestartBackoff() != 5*time.Minute || c.LogMaxBytes() != 10<<20 {
			t.Errorf("config = %+v", c)
		}
	}
	c, _ := Parse(boot(t, func(b *guestchannel.BootConfig) { b.RestartBackoffMillis, b.MaxRestartBackoffMillis = 100, 400 }, false))
	if c.RestartBackoff() != 100*time.Millisecond || c.MaxRestartBackoff() != 400*time.Millisecond {
		t.Errorf("back-off = %s, %s", c.RestartBackoff(), c.MaxRestartBackoff())
	}
	for name, tc := range map[string]struct {
		edit  func(*guestchannel.BootConfig)
		field string
	}{
		"unmapped unit": {func(b *guestchannel.BootConfig) { delete(b.Devices, "scsi0:1") }, "scsi0:1"},
		"no spec":       {func(b *guestchannel.BootConfig) { b.Spec = nil }, "spec"},
		"bad spec":      {func(b *guestchannel.BootConfig) { b.Spec = json.RawMessage(`{"version":9}`) }, "version"},
		"bad channel":   {func(b *guestchannel.BootConfig) { b.Channel = "tcp:x" }, "channel"},
	} {
		if _, err := Parse(boot(t, tc.edit, false)); err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: error %v, want one naming %s", name, err, tc.field)
		}
	}
}
