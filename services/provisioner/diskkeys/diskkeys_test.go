package diskkeys_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/diskkeys"
)

func keeper(t *testing.T) *diskkeys.Keeper {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kek")
	if err := diskkeys.WriteKeyFile(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	k, err := diskkeys.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestReleaseOnlyToThePodVMItsKeyWasMadeFor(t *testing.T) {
	k := keeper(t)
	r := &events.PodRecord{UID: "u1", Namespace: "default", Name: "web", Host: "esx-1-01", VMRef: "vm-42"}
	if err := k.Prepare(r); err != nil {
		t.Fatal(err)
	}
	first := *r.Encryption
	if err := k.Prepare(r); err != nil {
		t.Fatal(err)
	}
	if r.Encryption.Nonce == first.Nonce || !bytes.Equal(r.Encryption.WrappedKey, first.WrappedKey) {
		t.Fatal("a new create must get a new nonce and keep the pod's disk key")
	}
	priv, err := guestchannel.NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	good := events.DiskKeyRequest{Namespace: "default", Name: "web", UID: "u1", Host: "esx-1-01", VMUUID: "uuid-42",
		Nonce: r.Encryption.Nonce, PublicKey: priv.PublicKey().Bytes()}

	resp, err := k.Release(&good, r, "uuid-42")
	if err != nil {
		t.Fatal(err)
	}
	key, err := guestchannel.OpenDiskKey(priv, resp.Wrapped, "uuid-42", good.Nonce)
	if err != nil || len(key) != diskkeys.DiskKeySize {
		t.Fatalf("the guest opens %d bytes, %v", len(key), err)
	}
	if bytes.Contains(r.Encryption.WrappedKey, key) || bytes.Contains(resp.Wrapped, key) {
		t.Fatal("the clear key is in the record or the answer")
	}
	again, err := k.Release(&good, r, "uuid-42")
	if err != nil {
		t.Fatal(err)
	}
	if key2, _ := guestchannel.OpenDiskKey(priv, again.Wrapped, "uuid-42", good.Nonce); !bytes.Equal(key, key2) {
		t.Fatal("the pod's disk key changed between releases")
	}

	for _, tc := range []struct {
		name   string
		change func(*events.DiskKeyRequest)
		vmUUID string
		want   error
		reason string
	}{
		{"another VM", func(*events.DiskKeyRequest) {}, "uuid-43", diskkeys.ErrIdentity, "instance uuid"},
		{"the guest claims another uuid", func(q *events.DiskKeyRequest) { q.VMUUID = "uuid-43" }, "uuid-42", diskkeys.ErrIdentity, "instance uuid"},
		{"an earlier create's nonce", func(q *events.DiskKeyRequest) { q.Nonce = first.Nonce }, "uuid-42", diskkeys.ErrIdentity, "nonce"},
		{"another host", func(q *events.DiskKeyRequest) { q.Host = "esx-1-02" }, "uuid-42", diskkeys.ErrIdentity, "placed on"},
		{"another pod", func(q *events.DiskKeyRequest) { q.UID = "u2" }, "uuid-42", diskkeys.ErrIdentity, "uid"},
		{"no public key", func(q *events.DiskKeyRequest) { q.PublicKey = nil }, "uuid-42", nil, "publicKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := good
			tc.change(&q)
			_, err := k.Release(&q, r, tc.vmUUID)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("release: %v, want %v naming %q", err, tc.want, tc.reason)
			}
		})
	}

	// The sealed key does not open with another key file, nor for
	// another pod.
	other := keeper(t)
	if _, err := other.Release(&good, r, "uuid-42"); !errors.Is(err, diskkeys.ErrOtherKEK) {
		t.Fatalf("release with another key file: %v", err)
	}
	moved := *r
	moved.UID, good.UID = "u2", "u2"
	if _, err := k.Release(&good, &moved, "uuid-42"); err == nil {
		t.Fatal("a sealed key copied to another pod's record opened")
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	raw := make([]byte, diskkeys.KEKSize)
	_, _ = rand.Read(raw)
	for name, content := range map[string][]byte{"raw": raw, "hex": []byte("  " + strings.Repeat("ab", diskkeys.KEKSize) + "\n")} {
		p := filepath.Join(dir, name)
		_ = os.WriteFile(p, content, 0o600)
		if _, err := diskkeys.Load(p); err != nil {
			t.Errorf("%s key file: %v", name, err)
		}
	}
	short := filepath.Join(dir, "short")
	_ = os.WriteFile(short, []byte("0123"), 0o600)
	if _, err := diskkeys.Load(short); err == nil || !strings.Contains(err.Error(), "want 32") {
		t.Errorf("short key file: %v", err)
	}
	var none *diskkeys.Keeper
	if err := none.Prepare(&events.PodRecord{UID: "u"}); !errors.Is(err, diskkeys.ErrNoKEK) {
		t.Errorf("prepare without a key file: %v", err)
	}
}
