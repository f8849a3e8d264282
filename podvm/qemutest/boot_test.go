package qemutest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// TestBootRunsContainer builds the image, boots it with a pod whose one
// container writes a line and exits 3, and checks what the agent reports
// over the serial channel: Hello for the pod, the container running, then
// terminated with exit code 3, and its log.
func TestBootRunsContainer(t *testing.T) {
	Require(t)
	dir := t.TempDir()
	const marker = "hello from a pod VM"
	spec := &guestchannel.PodSpec{
		Version: guestchannel.SpecVersion, UID: "4f0e3c2a-1b7d-4d55-9a51-2f6c0d5e8a91", Namespace: "default",
		Name: "boot", Hostname: "boot", RestartPolicy: "Never", TerminationGracePeriodSeconds: 5,
		// What the provisioner sets where pods talk to a concentrator.
		ChannelToken: "boot-test-token",
		Disks: []guestchannel.Disk{
			{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: ChainID},
		},
		Containers: []guestchannel.Container{{
			Name: "main", Image: "busybox", Chain: []string{ChainID},
			Command: []string{"/bin/sh", "-c", "echo " + marker + " from $(hostname); exit 3"},
		}},
	}
	specJSON, err := guestchannel.MarshalSpec(spec)
	must(t, err)
	disks := MakeDisks(t, dir, map[string]string{
		guestchannel.GuestinfoSpec: specJSON,
		vmboot.GuestinfoVMUUID:     "42-boot-test",
	})
	sock := filepath.Join(dir, "channel.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// wait=on: the VM starts only once the host side is connected, so
	// nothing the agent writes is lost.
	vm := Boot(t, ctx, dir, disks, "-chardev", "socket,id=channel,path="+sock+",server=on,wait=on", "-serial", "chardev:channel")
	exited := vm.Exited

	var c net.Conn
	for c == nil {
		c, err = net.Dial("unix", sock)
		if err != nil {
			select {
			case err := <-exited:
				t.Fatalf("qemu exited before the channel opened: %v", err)
			case <-ctx.Done():
				t.Fatal("the channel socket never appeared")
			case <-time.After(20 * time.Millisecond):
			}
			c = nil
		}
	}
	start := time.Now()
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	conn := guestchannel.NewConn(c)

	env := receive(t, conn)
	var hello guestchannel.Hello
	if env.Type != guestchannel.TypeHello || env.Decode(&hello) != nil || hello.PodUID != spec.UID || hello.VMUUID != "42-boot-test" ||
		hello.ChannelToken != spec.ChannelToken {
		t.Fatalf("first message %s %s, want hello for pod %s on VM 42-boot-test with the spec's channel token", env.Type, env.Body, spec.UID)
	}
	t.Logf("hello after %.1fs", time.Since(start).Seconds())

	var running time.Duration
	var final guestchannel.ContainerState
	for final.Kind != guestchannel.StateTerminated {
		env := receive(t, conn)
		if env.Type != guestchannel.TypeStatus {
			t.Fatalf("unexpected %s message: %s", env.Type, env.Body)
		}
		var st guestchannel.Status
		must(t, env.Decode(&st))
		if st.Reason != "" {
			t.Fatalf("agent reports %s: %s", st.Reason, st.Message)
		}
		for _, cs := range st.Containers {
			if cs.Name != "main" {
				continue
			}
			if cs.State.Kind == guestchannel.StateRunning && running == 0 {
				running = time.Since(start)
			}
			final = cs.State
		}
	}
	if running == 0 {
		// A container that ends within one report still started.
		running = time.Since(start)
	}
	fmt.Printf("pod VM boot-to-running: %.1f s (QEMU TCG, 1 vCPU; power-on to container running, reported over the serial channel)\n", running.Seconds())
	if final.ExitCode != 3 || final.Reason != "Error" {
		t.Fatalf("container terminated %+v, want exit code 3 (Error)", final)
	}

	must(t, conn.Send(guestchannel.TypeLogs, "l1", guestchannel.LogsRequest{Container: "main"}))
	var log []byte
	for {
		env := receive(t, conn)
		if env.Type != guestchannel.TypeLogChunk || env.ID != "l1" {
			continue
		}
		var chunk guestchannel.LogChunk
		must(t, env.Decode(&chunk))
		if chunk.Error != "" {
			t.Fatalf("logs: %s", chunk.Error)
		}
		log = append(log, chunk.Data...)
		if chunk.EOF {
			break
		}
	}
	if want := marker + " from boot\n"; string(log) != want {
		t.Fatalf("container log %q, want %q", log, want)
	}
	// A concentrator that took the line over asks again (the serial port
	// stays open in the guest): hello of the same boot, then a full status
	// holding what happened before it.
	must(t, conn.Send(guestchannel.TypeResync, "", nil))
	for env = receive(t, conn); env.Type != guestchannel.TypeHello; env = receive(t, conn) {
	}
	var again guestchannel.Hello
	if must(t, env.Decode(&again)); again.BootID != hello.BootID || again.ChannelToken != spec.ChannelToken {
		t.Fatalf("hello after resync %+v, want the same boot (%s) and token", again, hello.BootID)
	}
	var st guestchannel.Status
	if env = receive(t, conn); env.Type != guestchannel.TypeStatus || env.Decode(&st) != nil || !st.Full ||
		len(st.Containers) != 1 || st.Containers[0].State.ExitCode != 3 {
		t.Fatalf("after resync: %s %s, want a full status with main's exit code 3", env.Type, env.Body)
	}
	// The container's writes went to the ephemeral disk, never the image.
	if b, _ := os.ReadFile(disks.Image); bytes.Contains(b, []byte(marker)) {
		t.Fatal("the image disk was written")
	}
}

func receive(t *testing.T, conn *guestchannel.Conn) guestchannel.Envelope {
	t.Helper()
	env, err := conn.Receive()
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			t.Fatal("timed out waiting for the agent")
		}
		t.Fatalf("channel: %v", err)
	}
	return env
}
