package guestchannel

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ChannelKeySize is the size of the key channel tokens are made with.
const ChannelKeySize = 32

// ChannelToken is the token of one pod's channel (PodSpec.ChannelToken,
// Hello.ChannelToken): HMAC-SHA256 of the pod's uid, namespace and name
// under key, base64url. The provisioner writes it into the pod VM's spec;
// a host side that listens on a network checks a hello's token with the
// same key (CheckChannelToken). Derived, not drawn: every replica of the
// provisioner and every create of the pod's VM give the same token, so no
// record has to keep it, and a token made for one pod proves nothing about
// another.
func ChannelToken(key []byte, uid, namespace, name string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("podvisor channel token v1\x00" + uid + "\x00" + namespace + "\x00" + name))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// CheckChannelToken reports whether token is the channel token of the pod,
// in constant time.
func CheckChannelToken(key []byte, token, uid, namespace, name string) bool {
	want := ChannelToken(key, uid, namespace, name)
	return hmac.Equal([]byte(token), []byte(want))
}

// LoadChannelKey reads a channel key file: ChannelKeySize raw bytes, or
// their hex encoding (surrounding white space ignored), as a Kubernetes
// Secret mounts it.
func LoadChannelKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("channel key file: %w", err)
	}
	if t := strings.TrimSpace(string(b)); len(t) == 2*ChannelKeySize {
		if h, err := hex.DecodeString(t); err == nil {
			clear(b)
			return h, nil
		}
	}
	if len(b) != ChannelKeySize {
		clear(b)
		return nil, fmt.Errorf("channel key file %s: want %d random bytes or %d hex digits", path, ChannelKeySize, 2*ChannelKeySize)
	}
	return b, nil
}

// WriteChannelKeyFile writes a new random channel key (hex) to path, mode
// 0600, unless the file exists: what an installation that runs its own
// concentrator does once.
func WriteChannelKeyFile(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	key := make([]byte, ChannelKeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	defer clear(key)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("channel key file: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(key) + "\n")
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("channel key file: %w", err)
	}
	return nil
}
