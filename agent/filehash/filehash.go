// Package filehash digests files: the agent's tests check that an image
// disk was not written, and the pod VM image build prints what it made.
//
// It lives in the agent module, which depends on no other module of the
// tree, so that both the agent's test harness and the podvm build can
// import it.
package filehash

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
)

// SHA256 is the SHA-256 of the file at path, in hex.
func SHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
