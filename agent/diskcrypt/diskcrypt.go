package diskcrypt

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KeySize is the size of a disk key: fscrypt's largest master key, as
// AES-256-XTS needs 64 bytes.
const KeySize = 64

// Dir is the name of the encrypted directory below the mountpoint.
const Dir = "encrypted"

// Unlocked is an ephemeral filesystem whose encrypted directory is open.
type Unlocked struct {
	// Dir is the encrypted directory: what the pod writes goes there.
	Dir        string
	mountpoint string
	identifier [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte
}

// ErrWrongKey is returned by Unlock when the encrypted directory was set up
// with another key.
var ErrWrongKey = errors.New("the encrypted directory was set up with another key")

// Unlock adds key to the filesystem mounted at mountpoint and opens (on a
// fresh filesystem: creates) its encrypted directory.
func Unlock(mountpoint string, key []byte) (*Unlocked, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("diskcrypt: key of %d bytes, want %d", len(key), KeySize)
	}
	root, err := os.Open(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("diskcrypt: %w", err)
	}
	defer root.Close()
	id, err := addKey(int(root.Fd()), key)
	if err != nil {
		return nil, fmt.Errorf("diskcrypt: add the key to %s: %w", mountpoint, explain(err))
	}
	u := &Unlocked{Dir: filepath.Join(mountpoint, Dir), mountpoint: mountpoint, identifier: id}
	if err := u.openDir(); err != nil {
		_ = u.Lock()
		return nil, err
	}
	return u, nil
}

func (u *Unlocked) openDir() error {
	err := os.Mkdir(u.Dir, 0o711)
	fresh := err == nil
	if err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("diskcrypt: %w", err)
	}
	d, err := os.Open(u.Dir)
	if err != nil {
		return fmt.Errorf("diskcrypt: %w", err)
	}
	defer d.Close()
	if fresh {
		p := unix.FscryptPolicyV2{
			Version:                   unix.FSCRYPT_POLICY_V2,
			Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
			Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
			Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
			Master_key_identifier:     u.identifier,
		}
		if err := ioctlPtr(int(d.Fd()), unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&p)); err != nil {
			return fmt.Errorf("diskcrypt: set the policy of %s: %w", u.Dir, explain(err))
		}
		return nil
	}
	got, err := policyIdentifier(int(d.Fd()))
	if err != nil {
		return fmt.Errorf("diskcrypt: policy of %s: %w", u.Dir, explain(err))
	}
	if got != u.identifier {
		return fmt.Errorf("diskcrypt: %s: %w", u.Dir, ErrWrongKey)
	}
	return nil
}

// Lock removes the key from the filesystem: the encrypted directory's
// contents can no longer be read through this mount once its files are
// closed. Unmounting also drops it; Lock says so explicitly first.
func (u *Unlocked) Lock() error {
	root, err := os.Open(u.mountpoint)
	if err != nil {
		return fmt.Errorf("diskcrypt: %w", err)
	}
	defer root.Close()
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], u.identifier[:])
	if err := ioctlPtr(int(root.Fd()), unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("diskcrypt: remove the key from %s: %w", u.mountpoint, err)
	}
	return nil
}

// addKey adds a v2 master key and returns its identifier. The argument is
// struct fscrypt_add_key_arg followed by the raw key (a flexible array).
func addKey(fd int, key []byte) ([unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte, error) {
	var id [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte
	size := int(unsafe.Sizeof(unix.FscryptAddKeyArg{}))
	buf := make([]byte, size+len(key))
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = uint32(len(key))
	copy(buf[size:], key)
	err := ioctlPtr(fd, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&buf[0]))
	copy(id[:], arg.Key_spec.U[:unix.FSCRYPT_KEY_IDENTIFIER_SIZE])
	clear(buf) // the raw key must not linger in this process's memory
	return id, err
}

// policyIdentifier reads a v2 directory policy's key identifier.
func policyIdentifier(fd int) ([unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte, error) {
	var id [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	if err := ioctlPtr(fd, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); err != nil {
		return id, err
	}
	if arg.Policy[0] != unix.FSCRYPT_POLICY_V2 {
		return id, fmt.Errorf("policy version %d, want %d", arg.Policy[0], unix.FSCRYPT_POLICY_V2)
	}
	var p unix.FscryptPolicyV2
	if err := binaryCopy(&p, arg.Policy[:]); err != nil {
		return id, err
	}
	return p.Master_key_identifier, nil
}

func binaryCopy(p *unix.FscryptPolicyV2, b []byte) error {
	size := int(unsafe.Sizeof(*p))
	if len(b) < size {
		return fmt.Errorf("policy of %d bytes, want %d", len(b), size)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(p)), size), b)
	return nil
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// explain turns the kernel's terse answers into what a person can act on.
func explain(err error) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w (the filesystem lacks the ext4 \"encrypt\" feature, or the kernel CONFIG_FS_ENCRYPTION)", err)
	case errors.Is(err, unix.ENOTTY):
		return fmt.Errorf("%w (the kernel has no filesystem encryption)", err)
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w (the directory already has another policy)", err)
	}
	return err
}
