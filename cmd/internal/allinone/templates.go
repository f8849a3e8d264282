package allinone

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"sync"
)

// agentIDs memoizes agentID per path, size and modification time.
var agentIDs sync.Map

// agentID identifies the pod VM agent build the simulated guests run (the
// digest of its binary): the provisioner's templates carry it, so a new
// agent replaces them (provisioner.EnvTemplateAgent).
func agentID(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	key := struct {
		path string
		size int64
		mod  int64
	}{path, st.Size(), st.ModTime().UnixNano()}
	if v, ok := agentIDs.Load(key); ok {
		return v.(string)
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	id := "sha256:" + hex.EncodeToString(h.Sum(nil))[:16]
	agentIDs.Store(key, id)
	return id
}
