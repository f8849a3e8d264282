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
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestPodVMGuestTalksOnANetworkSerialPort runs the real pod VM agent in a
// simulated guest whose VM has the serial ports the provisioner gives a pod
// VM with a channel address (podvm.ChannelPorts): the simulated host
// connects the VM's network serial port to the concentrator, as a vSphere
// host does, and the agent talks on its serial device. Its containers are
// reported, `podvisor logs` and `exec` reach it, and when the concentrator
// is replaced (a host agent restarted) the new one is told everything
// again on the line that stayed open.
func TestPodVMGuestTalksOnANetworkSerialPort(t *testing.T) {
	g := startGuestSim(t)
	ctx, b, host := context.Background(), g.bus, g.host
	agentSvc := guesttest.StartHostAgent(t, b, host.Name, g.channels)

	key := []byte(strings.Repeat("s", guestchannel.ChannelKeySize))
	concentrator := func(ln net.Listener) *hostagent.Concentrator {
		return &hostagent.Concentrator{Listener: ln, Key: key, Agents: map[string]*hostagent.Service{host.Name: agentSvc}}
	}
	addr, stop := guesttest.Concentrate(t, concentrator(nil))

	const uid = "5e1a1c4a-serial-test"
	grace := int64(2)
	rec := events.PodRecord{UID: uid, Namespace: "default", Name: "serial", Host: host.Name, VMName: "pv-" + uid, Phase: events.PodPhaseRunning}
	rec.Pod.Spec.TerminationGracePeriodSeconds = &grace
	rec.Pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "busybox"}}
	putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", "serial"), rec)

	chain := "sha256:" + strings.Repeat("c", 64)
	key32 := int32(-1000)
	spec := simtest.BusyboxSpec(uid, "serial", chain, grace,
		guestchannel.Container{Name: "app", Command: []string{"sh", "-c", "echo over the line; sleep 3600"}})
	spec.ChannelToken = guestchannel.ChannelToken(key, uid, "default", "serial")
	vm, info := g.runPodVM(t, simtest.PodVM{
		Name:        "pv-" + uid,
		Spec:        spec,
		ExtraConfig: map[string]string{guestchannel.GuestinfoChannel: podvm.ChannelDevice},
		Devices:     podvm.ChannelPorts(sim.SharedDatastore, "pv-"+uid, "tcp://"+addr, func() int32 { key32--; return key32 }),
	})
	t.Cleanup(func() {
		if task, err := vm.PowerOff(ctx); err == nil {
			_ = task.Wait(ctx)
		}
	})
	boot, err := os.ReadFile(filepath.Join(info.Dir, "boot.json"))
	if err != nil || !strings.Contains(string(boot), `"channel": "serial:/dev/pts/`) {
		t.Fatalf("the guest's boot config (%v) does not name a serial device as its channel:\n%s", err, boot)
	}

	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "env"), []byte("export PODVISOR_NATS_URL='"+b.Conn().ConnectedUrl()+"'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 60*time.Second, "app reported running through the concentrator", func() bool {
		r := lastReport(t, b, uid)
		return r != nil && len(r.ContainerStatuses) == 1 && r.ContainerStatuses[0].State.Running != nil
	})
	eventuallyWithin(t, 10*time.Second, "podvisor logs serial", func() bool {
		out, _, code := run(t, state, "", "logs", "serial", "-c", "app")
		return code == 0 && out == "over the line\n"
	})

	// The concentrator goes away and another takes its port: the host
	// connects the port again, and the agent, whose line never closed,
	// greets the new one when it asks.
	stop()
	if _, _, code := run(t, state, "", "exec", "serial", "-c", "app", "--", "true"); code == 0 {
		t.Error("exec succeeded with no concentrator to carry it")
	}
	var ln2 net.Listener
	eventuallyWithin(t, 10*time.Second, "the concentrator's port free again", func() bool {
		ln2, err = net.Listen("tcp", addr)
		return err == nil
	})
	_, stop = guesttest.Concentrate(t, concentrator(ln2))
	eventuallyWithin(t, 20*time.Second, "exec through the new concentrator", func() bool {
		out, _, code := run(t, state, "", "exec", "serial", "-c", "app", "--", "echo", "again")
		return code == 0 && out == "again\n"
	})
}
