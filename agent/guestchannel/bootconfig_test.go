package guestchannel

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestBootConfigValidate(t *testing.T) {
	valid := func() *BootConfig {
		return &BootConfig{
			Channel:  "unix:/run/guest/channel.sock",
			Devices:  map[string]string{"scsi0:0": "/dev/sda"},
			StateDir: "/run/podvisor",
		}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*BootConfig)
		field string
	}{
		{"valid", func(*BootConfig) {}, ""},
		{"vsock", func(b *BootConfig) { b.Channel = "vsock:2:1024" }, ""},
		{"no channel", func(b *BootConfig) { b.Channel = "" }, "channel"},
		{"unknown scheme", func(b *BootConfig) { b.Channel = "tcp:1.2.3.4:5" }, "channel"},
		{"relative state dir", func(b *BootConfig) { b.StateDir = "state" }, "stateDir"},
		{"no devices", func(b *BootConfig) { b.Devices = nil }, "devices"},
		{"relative cgroup", func(b *BootConfig) { b.CgroupParent = "vm" }, "cgroupParent"},
		{"standby", func(b *BootConfig) { b.Takeover = "fd:4" }, ""},
		{"takeover not an fd", func(b *BootConfig) { b.Takeover = "/run/takeover" }, "takeover"},
		{"takeover on stdin", func(b *BootConfig) { b.Takeover = "fd:0" }, "takeover"},
		{"updates", func(b *BootConfig) { b.Updates = "fd:5" }, ""},
		{"updates not an fd", func(b *BootConfig) { b.Updates = "guestinfo" }, "updates"},
		{"negative backoff", func(b *BootConfig) { b.RestartBackoffMillis = -1 }, "restartBackoffMillis"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := valid()
			tc.edit(b)
			wantErrorNaming(t, b.Validate(), tc.field)
		})
	}
}

type rwc struct {
	io.Reader
	io.Writer
}

func (rwc) Close() error { return nil }

// FuzzReceive feeds arbitrary bytes to the frame decoder: it must never
// panic, never return a frame without a type, and a frame it accepts must
// survive a round trip through Send.
func FuzzReceive(f *testing.F) {
	f.Add([]byte(`{"v":1,"type":"hello","body":{"protocol":1}}` + "\n"))
	f.Add([]byte(`{"v":1,"type":"log","id":"7","body":{"data":"aGk=","eof":true}}` + "\n{\"type\":\"x\"}"))
	f.Add([]byte("\n\n{}\n"))
	f.Add([]byte(`{"type":"status","body":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := NewConn(rwc{Reader: bytes.NewReader(data), Writer: io.Discard})
		for range 64 {
			env, err := c.Receive()
			if err != nil {
				return
			}
			if env.Type == "" {
				t.Fatal("accepted a frame without a type")
			}
			var out bytes.Buffer
			if err := NewConn(rwc{Reader: strings.NewReader(""), Writer: &out}).Send(env.Type, env.ID, env.Body); err != nil {
				continue // a body that is not valid JSON on its own cannot be re-sent as raw
			}
			back, err := NewConn(rwc{Reader: &out, Writer: io.Discard}).Receive()
			if err != nil || back.Type != env.Type || back.ID != env.ID {
				t.Fatalf("round trip of %+v: %+v, %v", env, back, err)
			}
		}
	})
}
