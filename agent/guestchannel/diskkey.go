package guestchannel

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// TypeDiskKey is the host's answer to a hello that carried a KeyRequest:
// the disk key wrapped for the agent's public key, or why there is none.
const TypeDiskKey = "disk.key"

// Encryption asks the agent to keep the pod's ephemeral disk encrypted.
// The VM starts without the key: the agent makes a key pair at boot, sends
// the public key with the VM's identity (KeyRequest in its hello), and
// opens the disk only once the host sends the key wrapped for that key
// pair (DiskKey). Until then the pod is Pending with reason WaitingForKey.
type Encryption struct {
	// Nonce is set by the provisioner when it creates the VM; the agent
	// returns it in its KeyRequest, so that the management server can tell
	// this VM from any other claiming the same uuid.
	Nonce string `json:"nonce"`
}

// ReasonWaitingForKey is the pod's Pending reason while an encrypted
// ephemeral disk waits for its key.
const ReasonWaitingForKey = "WaitingForKey"

// ReasonEvicted is the Failed phase's reason of a pod the agent evicted,
// as the kubelet does: an emptyDir volume on the ephemeral disk grew past
// its sizeLimit.
const ReasonEvicted = "Evicted"

// KeyRequest is the part of a hello that asks for the disk key.
type KeyRequest struct {
	// PublicKey is the agent's X25519 public key, made at boot and never
	// stored: the key it wraps for is only ever in the guest's memory.
	PublicKey []byte `json:"publicKey"`
	// Nonce repeats PodSpec.Encryption.Nonce.
	Nonce string `json:"nonce"`
}

// DiskKey carries the wrapped disk key (SealDiskKey), or Error when the
// host side refuses or cannot get it.
type DiskKey struct {
	Wrapped []byte `json:"wrapped,omitempty"`
	Error   string `json:"error,omitempty"`
}

// The wrapping: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256),
// HKDF-SHA256, AES-256-GCM, with the VM's identity as the info string, so
// a wrapped key opens only for the key pair it was made for, and only as
// the key of that VM.
var (
	wrapKDF  = hpke.HKDFSHA256()
	wrapAEAD = hpke.AES256GCM()
)

func wrapInfo(vmUUID, nonce string) []byte {
	return []byte("podvisor disk key v1\x00" + vmUUID + "\x00" + nonce)
}

// NewKeyPair makes the agent's key pair for one boot.
func NewKeyPair() (*ecdh.PrivateKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("guestchannel: key pair: %w", err)
	}
	return k, nil
}

// SealDiskKey wraps key for the public key of a KeyRequest, bound to the
// VM's identity.
func SealDiskKey(publicKey []byte, key []byte, vmUUID, nonce string) ([]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(publicKey)
	if err != nil {
		return nil, fmt.Errorf("guestchannel: public key: %w", err)
	}
	pk, err := hpke.NewDHKEMPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("guestchannel: public key: %w", err)
	}
	out, err := hpke.Seal(pk, wrapKDF, wrapAEAD, wrapInfo(vmUUID, nonce), key)
	if err != nil {
		return nil, fmt.Errorf("guestchannel: wrap the disk key: %w", err)
	}
	return out, nil
}

// ErrKeyUnwrap is returned by OpenDiskKey for a wrapped key that was not
// made for this key pair and identity (or was changed on the way).
var ErrKeyUnwrap = errors.New("guestchannel: the disk key was not wrapped for this VM")

// OpenDiskKey unwraps a key sealed with SealDiskKey.
func OpenDiskKey(priv *ecdh.PrivateKey, wrapped []byte, vmUUID, nonce string) ([]byte, error) {
	k, err := hpke.NewDHKEMPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("guestchannel: private key: %w", err)
	}
	key, err := hpke.Open(k, wrapKDF, wrapAEAD, wrapInfo(vmUUID, nonce), wrapped)
	if err != nil {
		return nil, ErrKeyUnwrap
	}
	return key, nil
}

// KeyFingerprint names a public key in logs and records (the key itself is
// public, but a short name is what a person compares).
func KeyFingerprint(publicKey []byte) string {
	sum := sha256.Sum256(publicKey)
	return hex.EncodeToString(sum[:8])
}
