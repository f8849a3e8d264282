package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
)

// Secure instantiation from the guest's side: the pod waits (Pending,
// WaitingForKey) with its key request in every hello; a key wrapped for
// another VM does not open the disk; the right one does, the container
// runs, and what it wrote is on the ephemeral disk's bytes only as
// ciphertext.
func TestEncryptedEphemeralDiskWaitsForItsKey(t *testing.T) {
	needGuest(t)
	// The marker is assembled by the shell, so it appears nowhere in the
	// spec: only the container's own writes can put it on the disk.
	writer := sh("writer", `m="podvisor-$((6*7))-marker"; for i in 1 2 3 4 5 6 7 8; do echo "$m" >> /secret.txt; done; echo "$m"; sync; sleep 3600`)
	spec := image.Spec("sealed", "Never", 1, nil, []guestchannel.Container{writer})
	spec.Encryption = &guestchannel.Encryption{Nonce: rand.Text()}
	g := guest(t, spec, guesttest.Options{})

	g.Host.Wait("the pod waiting for its key", wait, func(v guesttest.View) bool {
		return v.Phase == guestchannel.PhasePending && v.Reason == guestchannel.ReasonWaitingForKey
	})
	_, _, hellos := g.Host.Snapshot()
	req := hellos[len(hellos)-1].KeyRequest
	if req == nil || req.Nonce != spec.Encryption.Nonce || len(req.PublicKey) != 32 {
		t.Fatalf("hello's key request = %+v, want the spec's nonce and an X25519 public key", req)
	}
	key := make([]byte, 64)
	_, _ = rand.Read(key)
	vmUUID := "vm-" + spec.Name // what guesttest puts in the boot config

	// Wrapped for another VM: refused, the pod keeps waiting.
	wrong, err := guestchannel.SealDiskKey(req.PublicKey, key, "another-vm", req.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	g.Host.Send(guestchannel.TypeDiskKey, "", guestchannel.DiskKey{Wrapped: wrong})
	g.Host.Send(guestchannel.TypeDiskKey, "", guestchannel.DiskKey{Error: "identity does not match"})
	g.Host.Wait("the refusal reported", wait, func(v guesttest.View) bool {
		return v.Reason == guestchannel.ReasonWaitingForKey && strings.Contains(v.Message, "identity does not match")
	})
	if st := g.Host.Wait("still waiting", wait, func(guesttest.View) bool { return true }); st.Container("writer").State.Kind != guestchannel.StateWaiting {
		t.Fatalf("the container started without the key: %+v", st.Container("writer"))
	}

	right, err := guestchannel.SealDiskKey(req.PublicKey, key, vmUUID, req.Nonce)
	if err != nil {
		t.Fatal(err)
	}
	g.Host.Send(guestchannel.TypeDiskKey, "", guestchannel.DiskKey{Wrapped: right})
	g.Host.Wait("writer running", wait, running("writer"))
	g.Host.Wait("the marker logged", wait, func(guesttest.View) bool {
		out, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "writer"})
		return strings.Contains(out, "podvisor-42-marker")
	})
	g.Shutdown()

	raw, err := os.ReadFile(g.Ephemeral)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("podvisor-42-marker")) {
		t.Fatal("the container's marker is on the ephemeral disk in clear")
	}
	if bytes.Contains(raw, []byte("secret.txt")) {
		t.Fatal("the container's file name is on the ephemeral disk in clear")
	}
	if log := g.Log(); bytes.Contains([]byte(log), key) {
		t.Fatal("the disk key is in the agent's log")
	}
}
