package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/configdisk"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// watchedSpec is a pod's spec on the two disks configDiskFile.boot maps.
func watchedSpec(uid string, edit func(*guestchannel.PodSpec)) *guestchannel.PodSpec {
	s := &guestchannel.PodSpec{Version: guestchannel.SpecVersion, UID: uid, Namespace: "default", Name: "p-" + uid,
		RestartPolicy: "Never",
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:a"},
		},
		Containers: []guestchannel.Container{{Name: "c", Chain: []string{"sha256:a"}}}}
	if edit != nil {
		edit(s)
	}
	return s
}

func marshalSpec(t *testing.T, s *guestchannel.PodSpec) []byte {
	t.Helper()
	b, err := guestchannel.MarshalSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(b)
}

// configDiskFile is a VM's configuration disk in a file, which the test
// rewrites as a hypervisor changes the VM's guestinfo.
type configDiskFile struct {
	t    *testing.T
	path string
}

func newConfigDiskFile(t *testing.T) *configDiskFile {
	return &configDiskFile{t: t, path: filepath.Join(t.TempDir(), "config.img")}
}

func (d *configDiskFile) write(values map[string]string) {
	d.t.Helper()
	img, err := configdisk.Bytes(values)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(d.path, img, 0o644); err != nil {
		d.t.Fatal(err)
	}
}

func (d *configDiskFile) writeSpec(raw []byte) {
	d.t.Helper()
	d.write(map[string]string{guestchannel.GuestinfoSpec: string(raw)})
}

// boot is a booted VM's boot configuration holding spec, watching d.
func (d *configDiskFile) boot(spec []byte) guestchannel.BootConfig {
	return guestchannel.BootConfig{Channel: "serial:/dev/ttyS1", StateDir: "/run/podvisor", Watch: guestchannel.WatchConfigDisk + d.path,
		Spec: spec, Devices: map[string]string{"scsi0:0": "/dev/sda", "scsi0:1": "/dev/sdb"}}
}

// bootWatcher writes spec on d and returns the watcher of a VM booted with
// it, logging to log, with the spec as written and as the agent read it.
func (d *configDiskFile) bootWatcher(spec *guestchannel.PodSpec, log io.Writer) (w *watcher, raw []byte, parsed *guestchannel.PodSpec) {
	d.t.Helper()
	raw = marshalSpec(d.t, spec)
	d.writeSpec(raw)
	parsed, err := guestchannel.UnmarshalSpec(raw)
	if err != nil {
		d.t.Fatal(err)
	}
	w = newWatcher(&bootconfig.Config{Boot: d.boot(raw), Spec: parsed}, slog.New(slog.NewTextHandler(log, nil)))
	return w, raw, parsed
}

// A spec update the watcher cannot pass on yet (its queue is full) is not
// lost: the next read passes it on. It may be the network a pod forked
// before its attach waits for.
func TestWatcherKeepsAnUpdateItCouldNotPassOn(t *testing.T) {
	disk := newConfigDiskFile(t)
	w, _, parsed := disk.bootWatcher(watchedSpec("u1", func(s *guestchannel.PodSpec) { s.NetworkPending = true }), io.Discard)
	for range cap(w.updates) {
		w.updates <- parsed // what the pod has not taken yet
	}
	disk.writeSpec(marshalSpec(t, watchedSpec("u1", func(s *guestchannel.PodSpec) {
		s.DNS = &guestchannel.DNSConfig{Nameservers: []string{"10.0.0.53"}}
	})))
	if forked, done, err := w.check(); forked || done || err != nil {
		t.Fatalf("check with a full queue: forked %v, done %v, err %v; want the update kept for later", forked, done, err)
	}
	for range cap(w.updates) {
		<-w.updates
	}
	forked, done, err := w.check()
	if forked || !done || err != nil {
		t.Fatalf("check with room: forked %v, done %v, err %v; want the update passed on and nothing more to watch", forked, done, err)
	}
	select {
	case got := <-w.updates:
		if got.NetworkPending || got.DNS == nil || got.DNS.Nameservers[0] != "10.0.0.53" {
			t.Fatalf("update passed on: %+v, want the one with the network", got)
		}
	default:
		t.Fatal("the update was lost")
	}
}

// The first stage writes the boot configuration indented
// (cmd/podvm-init), spec included, while the source holds the spec as
// the provisioner wrote it: the same spec laid out otherwise is no update,
// and takes none of the queue's places.
func TestWatcherSeesNoUpdateInTheBootConfigurationsLayout(t *testing.T) {
	for name, edit := range map[string]func(*guestchannel.PodSpec){
		"template":        func(s *guestchannel.PodSpec) { s.Template = true },
		"network pending": func(s *guestchannel.PodSpec) { s.NetworkPending = true },
	} {
		t.Run(name, func(t *testing.T) {
			disk := newConfigDiskFile(t)
			raw := marshalSpec(t, watchedSpec("u1", edit))
			disk.writeSpec(raw)
			bootJSON, err := json.MarshalIndent(disk.boot(raw), "", "  ") // as podvm-init writes it
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := bootconfig.Parse(bootJSON)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(cfg.Boot.Spec, raw) {
				t.Fatal("the boot configuration holds the spec as the source does: the test shows nothing")
			}
			w := newWatcher(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			for range 2 {
				if forked, done, err := w.check(); forked || done || err != nil {
					t.Fatalf("check of the spec booted: forked %v, done %v, err %v; want nothing", forked, done, err)
				}
			}
			if n := len(w.updates); n != 0 {
				t.Fatalf("%d updates passed on for the spec the pod booted with, want none", n)
			}
		})
	}
}

// A template's agent greets the host only while the source shows the VM
// is still the template's: a child's spec ends the session (the child
// greets), and so does a source it cannot read or whose spec it cannot
// run, which it logs as an error; once the template's spec is there again
// it greets again.
func TestTemplateGreetsOnlyWhileTheSourceSaysItIsTheTemplate(t *testing.T) {
	disk := newConfigDiskFile(t)
	var logged bytes.Buffer
	w, tmpl, _ := disk.bootWatcher(watchedSpec("tmpl", func(s *guestchannel.PodSpec) { s.Template = true }), &logged)
	if err := w.beforeGreet(); err != nil {
		t.Fatalf("the template's own spec: %v, want a hello", err)
	}
	child := marshalSpec(t, watchedSpec("child", nil))
	for _, tc := range []struct {
		name  string
		write func()
		want  string // in the error
	}{
		{"a spec that does not decode", func() { disk.writeSpec([]byte(`{"uid":"child",`)) }, "pod spec"},
		{"a spec of an agent newer than this one", func() {
			disk.writeSpec(bytes.Replace(child, []byte(`"uid":"child"`), []byte(`"uid":"child","sidecars":[]`), 1))
		}, "unknown field"},
		{"a child on a disk the VM lacks", func() {
			disk.writeSpec(bytes.Replace(child, []byte(`"unit":"scsi0:1"`), []byte(`"unit":"scsi0:5"`), 1))
		}, "scsi0:5"},
		{"no spec", func() { disk.write(map[string]string{vmboot.GuestinfoVMUUID: "vm-child"}) }, "pod spec"},
		{"a source that cannot be read", func() {
			if err := os.Remove(disk.path); err != nil {
				t.Fatal(err)
			}
		}, "not read again"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logged.Reset()
			tc.write()
			err := w.beforeGreet()
			if err == nil || errors.Is(err, errForked) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("beforeGreet = %v; want no hello, for want of knowing whose VM it is (%q)", err, tc.want)
			}
			select {
			case <-w.forked:
				t.Fatal("taken as forked")
			default:
			}
			if tc.want != "not read again" && !strings.Contains(logged.String(), "level=ERROR") {
				t.Errorf("log %q, want an error", logged.String())
			}
		})
	}
	disk.writeSpec(tmpl)
	if err := w.beforeGreet(); err != nil {
		t.Fatalf("the template's spec again: %v, want a hello", err)
	}
	disk.writeSpec(child)
	if err := w.beforeGreet(); !errors.Is(err, errForked) {
		t.Fatalf("a child's spec: %v, want the session ended for the child", err)
	}
	if w.child == nil || w.child.Spec.UID != "child" {
		t.Fatalf("child %+v, want the child's configuration", w.child)
	}
}
