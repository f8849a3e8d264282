package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/configdisk"
	"github.com/podvisor/podvisor/agent/guestchannel"
)

// A spec update the watcher cannot pass on yet (its queue is full) is not
// lost: the next read passes it on. It may be the network a pod forked
// before its attach waits for.
func TestWatcherKeepsAnUpdateItCouldNotPassOn(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "config.img")
	spec := func(pending bool, dns string) []byte {
		s := &guestchannel.PodSpec{Version: guestchannel.SpecVersion, UID: "u1", Namespace: "default", Name: "p",
			RestartPolicy: "Never", NetworkPending: pending,
			Disks: []guestchannel.Disk{
				{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
				{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:a"},
			},
			Containers: []guestchannel.Container{{Name: "c", Chain: []string{"sha256:a"}}}}
		if dns != "" {
			s.DNS = &guestchannel.DNSConfig{Nameservers: []string{dns}}
		}
		b, err := guestchannel.MarshalSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		return []byte(b)
	}
	write := func(b []byte) {
		img, err := configdisk.Bytes(map[string]string{guestchannel.GuestinfoSpec: string(b)})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(disk, img, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	first := spec(true, "")
	write(first)
	parsed, err := guestchannel.UnmarshalSpec(first)
	if err != nil {
		t.Fatal(err)
	}
	w := newWatcher(&bootconfig.Config{Boot: guestchannel.BootConfig{Watch: guestchannel.WatchConfigDisk + disk, Spec: first,
		Devices: map[string]string{"scsi0:0": "/dev/sda", "scsi0:1": "/dev/sdb"}}, Spec: parsed},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	for range cap(w.updates) {
		w.updates <- parsed // what the pod has not taken yet
	}
	write(spec(false, "10.0.0.53"))
	if forked, done := w.check(); forked || done {
		t.Fatalf("check with a full queue: forked %v, done %v; want the update kept for later", forked, done)
	}
	for range cap(w.updates) {
		<-w.updates
	}
	forked, done := w.check()
	if forked || !done {
		t.Fatalf("check with room: forked %v, done %v; want the update passed on and nothing more to watch", forked, done)
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
