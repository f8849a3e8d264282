// Package diskcrypt encrypts the pod's ephemeral disk with the kernel's
// filesystem-level encryption (fscrypt, v2 policies) on the disk's ext4
// filesystem, for pods that ask for an encrypted ephemeral disk
// (podvisor.io/ephemeral-encryption: required).
//
// The disk is formatted with the ext4 "encrypt" feature (package disks
// always sets it). Unlock adds the disk key to the filesystem's keyring
// (FS_IOC_ADD_ENCRYPTION_KEY; the kernel derives the per-file keys and
// returns the key's identifier) and, on a fresh disk, sets a v2 policy
// (AES-256-XTS contents, AES-256-CTS file names, 32-byte name padding) on
// one directory, <mountpoint>/encrypted, which then holds everything the
// pod writes: the containers' upper layers, their logs and the emptyDir
// volumes. On a disk that was unlocked before (a guest rebooted on the
// same disk) the directory's policy must name the same key, or Unlock
// refuses it. Lock removes the key again before the disk is unmounted.
//
// What is encrypted: file contents and file names below that directory.
// What is not: the filesystem's own metadata (sizes, timestamps, the
// number of files), and the key, which lives only in the guest kernel's
// memory. The key arrives over the guest channel wrapped for a key pair
// the agent made at boot (guestchannel.OpenDiskKey); nothing on the disk
// or in the VM's configuration can unlock it.
//
// In the pod VM boot image, where device-mapper is available, a block-level
// dm-crypt/LUKS mapping would hide the metadata as well; simulated guests
// run on kernels without device-mapper, and fscrypt is what they offer.
package diskcrypt
