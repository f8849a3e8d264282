package cli

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/podvm/qemutest"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/bustest"
)

// TestBootImageTalksToTheConcentrator boots the pod VM boot image under QEMU
// with its channel on a network serial port that QEMU connects to the host
// agents' concentrator, as a vSphere host connects a pod VM's (the
// provisioner's ChannelPorts: COM2, direction client): the booted agent's
// hello passes the concentrator's token check, its container is reported
// through the host agent, and `podvisor logs` and `exec` reach it.
func TestBootImageTalksToTheConcentrator(t *testing.T) {
	qemutest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b := bustest.Start(t)
	channels, err := os.MkdirTemp("", "pvq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(channels) })
	const host = "esx-1-01"
	agent := guesttest.StartHostAgent(t, b, host, channels)
	key := []byte(strings.Repeat("q", guestchannel.ChannelKeySize))
	concentrator := func(ln net.Listener) *hostagent.Concentrator {
		return &hostagent.Concentrator{Listener: ln, Key: key, Agents: map[string]*hostagent.Service{host: agent}}
	}
	addr, stop := guesttest.Concentrate(t, concentrator(nil))

	const uid = "7d2f0a61-boot-serial"
	rec := events.PodRecord{UID: uid, Namespace: "default", Name: "booted", Host: host, VMName: "pv-" + uid, Phase: events.PodPhaseRunning}
	rec.Pod.Spec.Containers = []corev1.Container{{Name: "main", Image: "busybox"}}
	putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", "booted"), rec)
	spec := &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: uid, Namespace: "default", Name: "booted", Hostname: "booted",
		RestartPolicy: "Never", TerminationGracePeriodSeconds: 1,
		ChannelToken: guestchannel.ChannelToken(key, uid, "default", "booted"),
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: qemutest.ChainID},
		},
		Containers: []guestchannel.Container{{Name: "main", Image: "busybox", Chain: []string{qemutest.ChainID},
			Command: []string{"/bin/sh", "-c", "echo booted and wired; exec sleep 3600"}}},
	}
	specJSON, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disks := qemutest.MakeDisks(t, dir, map[string]string{
		guestchannel.GuestinfoSpec:    specJSON,
		guestchannel.GuestinfoChannel: podvm.ChannelDevice,
		vmboot.GuestinfoVMUUID:        "42-boot-serial",
	})
	start := time.Now()
	// QEMU connects the port as a vSphere host does (direction client), and
	// again a second after the connection ends.
	qemutest.Boot(t, ctx, dir, disks, "-chardev", "socket,id=channel,host=127.0.0.1,port="+strings.Split(addr, ":")[1]+",server=off,reconnect=1",
		"-serial", "chardev:channel")

	eventuallyWithin(t, 4*time.Minute, "main reported running through the concentrator", func() bool {
		r := lastReport(t, b, uid)
		return r != nil && len(r.ContainerStatuses) == 1 && r.ContainerStatuses[0].State.Running != nil
	})
	t.Logf("boot to running, reported through the concentrator: %.1f s (QEMU TCG)", time.Since(start).Seconds())
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "env"), []byte("export PODVISOR_NATS_URL='"+b.Conn().ConnectedUrl()+"'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 30*time.Second, "podvisor logs booted", func() bool {
		out, _, code := run(t, state, "", "logs", "booted")
		return code == 0 && out == "booted and wired\n"
	})
	// (The image holds busybox as sh alone: read and echo are the shell's.)
	if out, errOut, code := run(t, state, "", "exec", "booted", "--", "sh", "-c", "read h < /proc/sys/kernel/hostname; echo $h"); code != 0 || out != "booted\n" {
		t.Errorf("exec of the hostname: exit %d, stdout %q, stderr %q; want booted", code, out, errOut)
	}

	// The concentrator goes (a host agent restarted) and another takes its
	// port: QEMU connects the port again, and the booted agent, whose serial
	// port never closed, greets the new one when it asks.
	stop()
	var ln2 net.Listener
	eventuallyWithin(t, 10*time.Second, "the concentrator's port free again", func() bool {
		ln2, err = net.Listen("tcp", addr)
		return err == nil
	})
	_, stop = guesttest.Concentrate(t, concentrator(ln2))
	eventuallyWithin(t, 60*time.Second, "exec through the new concentrator", func() bool {
		out, _, code := run(t, state, "", "exec", "booted", "--", "sh", "-c", "echo again")
		return code == 0 && out == "again\n"
	})
}
