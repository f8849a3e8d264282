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
	"github.com/podvisor/podvisor/shared/bus"
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
	r := startSerialRig(t)
	addr, stop := r.addr, r.stop

	const uid = "7d2f0a61-boot-serial"
	r.podRecord(t, ctx, uid, "booted")
	dir := t.TempDir()
	disks := qemutest.MakeDisks(t, dir, r.guestinfo(t, r.spec(uid, "default", "booted", "echo booted and wired; exec sleep 3600"), "42-boot-serial"))
	start := time.Now()
	qemutest.Boot(t, ctx, dir, disks, r.port()...)

	eventuallyWithin(t, 4*time.Minute, "main reported running through the concentrator", r.running(t, uid))
	t.Logf("boot to running, reported through the concentrator: %.1f s (QEMU TCG)", time.Since(start).Seconds())
	state := r.cliState(t)
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
	var err error
	eventuallyWithin(t, 10*time.Second, "the concentrator's port free again", func() bool {
		ln2, err = net.Listen("tcp", addr)
		return err == nil
	})
	_, stop = guesttest.Concentrate(t, r.concentrator(ln2))
	eventuallyWithin(t, 60*time.Second, "exec through the new concentrator", func() bool {
		out, _, code := run(t, state, "", "exec", "booted", "--", "sh", "-c", "echo again")
		return code == 0 && out == "again\n"
	})
}

// serialRig is what a boot image test over a network serial port needs: a
// bus, a host agent and the concentrator QEMU connects the VM's port to.
type serialRig struct {
	bus   *bus.Bus
	key   []byte
	agent *hostagent.Service
	addr  string
	stop  func()
}

const rigHost = "esx-1-01"

func startSerialRig(t *testing.T) *serialRig {
	t.Helper()
	r := &serialRig{bus: bustest.Start(t), key: []byte(strings.Repeat("q", guestchannel.ChannelKeySize))}
	channels, err := os.MkdirTemp("", "pvq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(channels) })
	r.agent = guesttest.StartHostAgent(t, r.bus, rigHost, channels)
	r.addr, r.stop = guesttest.Concentrate(t, r.concentrator(nil))
	return r
}

// concentrator is the rig's concentrator on ln (nil: a port of its own).
func (r *serialRig) concentrator(ln net.Listener) *hostagent.Concentrator {
	return &hostagent.Concentrator{Listener: ln, Key: r.key, Agents: map[string]*hostagent.Service{rigHost: r.agent}}
}

// port is QEMU's second serial port connected to the concentrator as a
// vSphere host connects a pod VM's (direction client), and again a second
// after the connection ends.
func (r *serialRig) port() []string {
	return []string{"-chardev", "socket,id=channel,host=127.0.0.1,port=" + strings.Split(r.addr, ":")[1] + ",server=off,reconnect=1",
		"-serial", "chardev:channel"}
}

// podRecord records a running pod placed on the rig's host.
func (r *serialRig) podRecord(t *testing.T, ctx context.Context, uid, name string) {
	t.Helper()
	rec := events.PodRecord{UID: uid, Namespace: "default", Name: name, Host: rigHost, VMName: "pv-" + uid, Phase: events.PodPhaseRunning}
	rec.Pod.Spec.Containers = []corev1.Container{{Name: "main", Image: "busybox"}}
	putRecord(t, ctx, r.bus, events.BucketPods, events.PodRecordKey("default", name), rec)
}

// spec is a pod of one busybox container running script, with the
// channel token of its identity.
func (r *serialRig) spec(uid, ns, name, script string) *guestchannel.PodSpec {
	return &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: uid, Namespace: ns, Name: name, Hostname: name,
		RestartPolicy: "Never", TerminationGracePeriodSeconds: 1,
		ChannelToken: guestchannel.ChannelToken(r.key, uid, ns, name),
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: qemutest.ChainID},
		},
		Containers: []guestchannel.Container{{Name: "main", Image: "busybox", Chain: []string{qemutest.ChainID},
			Command: []string{"/bin/sh", "-c", script}}},
	}
}

// running says whether the pod's last report has its one container
// running.
func (r *serialRig) running(t *testing.T, uid string) func() bool {
	return func() bool {
		rep := lastReport(t, r.bus, uid)
		return rep != nil && len(rep.ContainerStatuses) == 1 && rep.ContainerStatuses[0].State.Running != nil
	}
}

// cliState is a state directory from which the podvisor command reaches
// the rig's bus.
func (r *serialRig) cliState(t *testing.T) string {
	t.Helper()
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "env"), []byte("export PODVISOR_NATS_URL='"+r.bus.Conn().ConnectedUrl()+"'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return state
}

// guestinfo is what the provisioner gives such a pod VM: the spec, the
// channel on the second serial port, the VM's uuid.
func (r *serialRig) guestinfo(t *testing.T, spec *guestchannel.PodSpec, vmUUID string) map[string]string {
	t.Helper()
	specJSON, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		guestchannel.GuestinfoSpec:    specJSON,
		guestchannel.GuestinfoChannel: podvm.ChannelDevice,
		vmboot.GuestinfoVMUUID:        vmUUID,
	}
}
