package diskkeys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
)

// DiskKeySize is the size of a disk key (fscrypt's AES-256-XTS master key).
const DiskKeySize = 64

// KEKSize is the size of the key-encryption key.
const KEKSize = 32

// Errors a release refuses with; each is wrapped with the detail.
var (
	// ErrNoKEK: no key file was configured, so encrypted pods cannot run.
	ErrNoKEK = errors.New("no key-encryption key configured (PODVISOR_PROVISIONER_KEY_FILE)")
	// ErrIdentity: the request does not name the VM the provisioner made.
	ErrIdentity = errors.New("the key request does not match the pod VM")
	// ErrOtherKEK: the record's key was sealed with another KEK.
	ErrOtherKEK = errors.New("the disk key was sealed with another key-encryption key")
)

// Keeper seals, unseals and releases disk keys. The zero value has no KEK:
// every call fails with ErrNoKEK.
type Keeper struct {
	aead cipher.AEAD
	id   string
}

// New returns a Keeper for kek (KEKSize bytes).
func New(kek []byte) (*Keeper, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("diskkeys: key-encryption key of %d bytes, want %d", len(kek), KEKSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("diskkeys: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("diskkeys: %w", err)
	}
	sum := sha256.Sum256(append([]byte("podvisor kek id\x00"), kek...))
	return &Keeper{aead: aead, id: hex.EncodeToString(sum[:6])}, nil
}

// Load reads the KEK from a file: KEKSize raw bytes, or their hex encoding
// (surrounding white space ignored), as a Kubernetes Secret mounts it.
func Load(path string) (*Keeper, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("diskkeys: key file: %w", err)
	}
	defer clear(b)
	kek := b
	if t := strings.TrimSpace(string(b)); len(t) == 2*KEKSize {
		if h, err := hex.DecodeString(t); err == nil {
			defer clear(h)
			kek = h
		}
	}
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("diskkeys: key file %s: %d bytes, want %d random bytes or %d hex digits", path, len(b), KEKSize, 2*KEKSize)
	}
	return New(kek)
}

// WriteKeyFile writes a new random KEK (hex) to path, mode 0600, unless
// the file exists: what `podvisor up` does in its state directory.
func WriteKeyFile(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	kek := make([]byte, KEKSize)
	if _, err := rand.Read(kek); err != nil {
		return err
	}
	defer clear(kek)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("diskkeys: key file: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(kek) + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("diskkeys: key file: %w", err)
	}
	return nil
}

func (k *Keeper) ok() error {
	if k == nil || k.aead == nil {
		return ErrNoKEK
	}
	return nil
}

// Prepare makes a pod's encryption state for a new create of its VM: a
// fresh nonce every time, and a disk key the first time (kept, sealed, for
// the life of the pod). r.Encryption is updated in memory; the caller saves
// the record before the VM is created.
func (k *Keeper) Prepare(r *events.PodRecord) error {
	if err := k.ok(); err != nil {
		return err
	}
	if r.Encryption == nil {
		r.Encryption = &events.PodEncryption{}
	}
	if r.Encryption.WrappedKey == nil {
		key := make([]byte, DiskKeySize)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("diskkeys: %w", err)
		}
		r.Encryption.WrappedKey = k.seal(r.UID, key)
		r.Encryption.KeyID = k.id
		clear(key)
	}
	r.Encryption.Nonce = rand.Text()
	return nil
}

func (k *Keeper) seal(uid string, key []byte) []byte {
	nonce := make([]byte, k.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return k.aead.Seal(nonce, nonce, key, []byte(uid))
}

func (k *Keeper) open(uid string, e *events.PodEncryption) ([]byte, error) {
	if e.KeyID != k.id {
		return nil, fmt.Errorf("%w (sealed with %s, the key file's is %s)", ErrOtherKEK, e.KeyID, k.id)
	}
	n := k.aead.NonceSize()
	if len(e.WrappedKey) < n {
		return nil, errors.New("diskkeys: sealed key too short")
	}
	key, err := k.aead.Open(nil, e.WrappedKey[:n], e.WrappedKey[n:], []byte(uid))
	if err != nil {
		return nil, fmt.Errorf("diskkeys: the sealed key does not open for pod %s: %w", uid, err)
	}
	return key, nil
}

// Open unseals the disk key of a pod record, for an operator's audit (and
// the tests that check the key leaks nowhere). The caller wipes it.
func (k *Keeper) Open(r *events.PodRecord) ([]byte, error) {
	if err := k.ok(); err != nil {
		return nil, err
	}
	if r.Encryption == nil {
		return nil, fmt.Errorf("diskkeys: pod %s has no encrypted disk", r.Key())
	}
	return k.open(r.UID, r.Encryption)
}

// Release answers a key request for the pod of r, whose VM vCenter reports
// with instance uuid vmUUID: the disk key wrapped for the request's public
// key, or why not.
func (k *Keeper) Release(req *events.DiskKeyRequest, r *events.PodRecord, vmUUID string) (*events.DiskKeyResponse, error) {
	if err := k.ok(); err != nil {
		return nil, err
	}
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("key request: %w", err)
	}
	switch {
	case r.UID != req.UID:
		return nil, fmt.Errorf("%w: pod %s has uid %s, the guest says %s", ErrIdentity, r.Key(), r.UID, req.UID)
	case r.Encryption == nil || r.Encryption.WrappedKey == nil:
		return nil, fmt.Errorf("%w: pod %s has no encrypted disk", ErrIdentity, r.Key())
	case r.Host != req.Host:
		return nil, fmt.Errorf("%w: pod %s is placed on %q, the request came from %q", ErrIdentity, r.Key(), r.Host, req.Host)
	case vmUUID == "" || vmUUID != req.VMUUID:
		return nil, fmt.Errorf("%w: VM %s of pod %s has instance uuid %q, the guest says %q", ErrIdentity, r.VMRef, r.Key(), vmUUID, req.VMUUID)
	case r.Encryption.Nonce != req.Nonce:
		return nil, fmt.Errorf("%w: the nonce is not the one of the VM's create", ErrIdentity)
	}
	key, err := k.open(r.UID, r.Encryption)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	wrapped, err := guestchannel.SealDiskKey(req.PublicKey, key, vmUUID, req.Nonce)
	if err != nil {
		return nil, err
	}
	return &events.DiskKeyResponse{Wrapped: wrapped}, nil
}
