// Package diskkeys is the provisioner's side of secure instantiation: the
// keys of pods' encrypted ephemeral disks, and their release to the pod VM
// that was created for them.
//
// A Keeper holds the key-encryption key (KEK), read from a Secret file
// (PODVISOR_PROVISIONER_KEY_FILE: 32 random bytes, raw or hex). For each
// encrypted pod it makes a random 64-byte disk key and keeps it only sealed
// with the KEK (AES-256-GCM, the pod uid as additional data, so a sealed
// key copied to another pod's record does not open), in the pod record.
//
// Release checks a guest's key request against what the provisioner itself
// created: the pod (uid), the host the pod is placed on, the instance uuid
// of the VM recorded for the pod (read from vCenter, not from the guest)
// and the nonce put into that VM's spec at its create. Only then is the
// disk key unsealed and sealed again for the guest's public key, bound to
// the same identity (guestchannel.SealDiskKey): what leaves the provisioner
// opens only in the guest that made the key pair. The clear key exists in
// the provisioner's memory for the length of one call and is wiped after.
//
// What the nonce does and does not prove: it ties a request to one create
// of the VM (a request replayed from an earlier VM of the pod names an old
// nonce). It is in the VM's configuration, readable by whoever may read
// it in vCenter, so it is not a secret: the request also has to arrive
// through a host agent (only host agents may ask, by the bus's
// permissions) and name the VM's real uuid. A vTPM-backed attestation of
// the guest would be the stronger proof on a real vCenter.
package diskkeys
