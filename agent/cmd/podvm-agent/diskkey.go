package main

import (
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/podvisor/podvisor/agent/channel"
	"github.com/podvisor/podvisor/agent/diskcrypt"
	"github.com/podvisor/podvisor/agent/disks"
	"github.com/podvisor/podvisor/agent/guestchannel"
)

// keyWait is the agent's side of secure instantiation: the key pair made
// at boot, the request every hello carries until the disk key has come,
// and the key itself on its way from the channel to the filesystem. The
// private key and the disk key live only in this process's memory.
type keyWait struct {
	priv        *ecdh.PrivateKey
	uuid, nonce string
	log         *slog.Logger

	mu   sync.Mutex
	done bool
	got  chan []byte // the unwrapped key, once
}

func newKeyWait(vmUUID, nonce string, log *slog.Logger) (*keyWait, error) {
	if vmUUID == "" {
		return nil, errors.New("encrypted ephemeral disk: the VM's instance uuid is unknown (boot configuration vmUUID)")
	}
	priv, err := guestchannel.NewKeyPair()
	if err != nil {
		return nil, err
	}
	return &keyWait{priv: priv, uuid: vmUUID, nonce: nonce, log: log, got: make(chan []byte, 1)}, nil
}

var _ channel.KeyWaiter = (*agent)(nil)

// KeyRequest is what every hello carries while the key has not come.
func (a *agent) KeyRequest() *guestchannel.KeyRequest {
	if a.keys == nil {
		return nil
	}
	a.keys.mu.Lock()
	defer a.keys.mu.Unlock()
	if a.keys.done {
		return nil
	}
	return &guestchannel.KeyRequest{PublicKey: a.keys.priv.PublicKey().Bytes(), Nonce: a.keys.nonce}
}

// DiskKey takes the host's answer: a key wrapped for this boot's key pair
// and this VM, or the reason there is none (the pod then stays
// WaitingForKey with that reason, and the next connection asks again).
func (a *agent) DiskKey(k guestchannel.DiskKey) {
	w := a.keys
	if w == nil {
		return
	}
	if k.Error != "" {
		w.log.Warn("the host refused the disk key", "reason", k.Error)
		w.mu.Lock()
		done := w.done
		w.mu.Unlock()
		if done {
			return
		}
		a.board.SetPending(guestchannel.ReasonWaitingForKey, "the host refused the disk key: "+k.Error)
		return
	}
	key, err := guestchannel.OpenDiskKey(w.priv, k.Wrapped, w.uuid, w.nonce)
	if err != nil {
		w.log.Warn("disk key not usable", "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		clear(key)
		return
	}
	w.done = true
	w.got <- key
}

// unlockEphemeral waits for the disk key and opens the encrypted directory
// of the ephemeral disk; the pod writes there from then on.
func (a *agent) unlockEphemeral(ctx context.Context, m *disks.Mounted) (*diskcrypt.Unlocked, error) {
	a.board.SetPending(guestchannel.ReasonWaitingForKey, "the ephemeral disk is encrypted; waiting for its key from the host")
	a.keys.log.Info("waiting for the disk key", "publicKey", guestchannel.KeyFingerprint(a.keys.priv.PublicKey().Bytes()))
	var key []byte
	select {
	case key = <-a.keys.got:
	case <-ctx.Done():
		return nil, fmt.Errorf("stopped while waiting for the disk key: %w", ctx.Err())
	}
	defer clear(key)
	u, err := diskcrypt.Unlock(m.Ephemeral, key)
	if err != nil {
		return nil, err
	}
	a.keys.log.Info("encrypted ephemeral disk unlocked")
	m.Ephemeral = u.Dir
	// Pending with no reason: the supervisor takes over from here.
	a.board.SetPending("", "")
	return u, nil
}
