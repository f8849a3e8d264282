package guestchannel_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

func TestDiskKeyOpensOnlyForItsKeyPairAndIdentity(t *testing.T) {
	priv, err := guestchannel.NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	other, err := guestchannel.NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{7}, 64)
	wrapped, err := guestchannel.SealDiskKey(priv.PublicKey().Bytes(), key, "uuid-1", "nonce-1")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, key) {
		t.Fatal("the wrapped key contains the key")
	}
	got, err := guestchannel.OpenDiskKey(priv, wrapped, "uuid-1", "nonce-1")
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("open: %x, %v", got, err)
	}
	for name, tc := range map[string]struct {
		uuid, nonce string
		priv        bool
	}{
		"another key pair": {"uuid-1", "nonce-1", false},
		"another VM":       {"uuid-2", "nonce-1", true},
		"another create":   {"uuid-1", "nonce-2", true},
	} {
		t.Run(name, func(t *testing.T) {
			p := priv
			if !tc.priv {
				p = other
			}
			if _, err := guestchannel.OpenDiskKey(p, wrapped, tc.uuid, tc.nonce); !errors.Is(err, guestchannel.ErrKeyUnwrap) {
				t.Fatalf("open: %v, want ErrKeyUnwrap", err)
			}
		})
	}
	if _, err := guestchannel.SealDiskKey([]byte("short"), key, "u", "n"); err == nil {
		t.Fatal("a malformed public key was accepted")
	}
}
