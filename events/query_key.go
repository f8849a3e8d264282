package events

import (
	"errors"
	"fmt"
)

// SubjectDiskKeyRelease is where a host agent asks the provisioner for the
// key of a pod VM's encrypted ephemeral disk (request DiskKeyRequest,
// answer DiskKeyResponse), on behalf of the VM's agent. It is outside
// pv.query.> on purpose: clients may ask every query, and only host agents
// may ask for keys.
const SubjectDiskKeyRelease = "pv.keys.release"

// DiskKeyRequest is a pod VM agent's key request as its host agent
// forwards it: the VM's identity as the guest states it and the public key
// the disk key is to be wrapped for.
type DiskKeyRequest struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	// Host is the host whose agent holds the guest's channel.
	Host string `json:"host"`
	// VMUUID is the VM's instance uuid as the guest sees it.
	VMUUID string `json:"vmUUID"`
	// Nonce is the one the provisioner put in the VM's spec at create.
	Nonce string `json:"nonce"`
	// PublicKey is the agent's X25519 public key of this boot.
	PublicKey []byte `json:"publicKey"`
	// BootID is the guest's boot, for the provisioner's log.
	BootID string `json:"bootID,omitempty"`
}

// Validate names every missing field.
func (r *DiskKeyRequest) Validate() error {
	var errs []error
	for _, f := range []struct{ name, v string }{
		{"namespace", r.Namespace}, {"name", r.Name}, {"uid", r.UID}, {"host", r.Host},
		{"vmUUID", r.VMUUID}, {"nonce", r.Nonce},
	} {
		if f.v == "" {
			errs = append(errs, fmt.Errorf("%s: required", f.name))
		}
	}
	if len(r.PublicKey) != 32 {
		errs = append(errs, fmt.Errorf("publicKey: %d bytes, want an X25519 public key (32)", len(r.PublicKey)))
	}
	return errors.Join(errs...)
}

// DiskKeyResponse carries the disk key wrapped for the request's public
// key and the VM's identity (guestchannel.SealDiskKey).
type DiskKeyResponse struct {
	Wrapped []byte `json:"wrapped"`
}
