package guestchannel

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChannelTokenIsThePodsAlone(t *testing.T) {
	key := []byte(strings.Repeat("k", ChannelKeySize))
	tok := ChannelToken(key, "uid-1", "default", "web")
	if tok != ChannelToken(key, "uid-1", "default", "web") {
		t.Fatal("the token of one pod changes between calls")
	}
	if !CheckChannelToken(key, tok, "uid-1", "default", "web") {
		t.Fatal("a pod's own token is refused")
	}
	for _, c := range []struct{ uid, ns, name string }{
		{"uid-2", "default", "web"}, {"uid-1", "other", "web"}, {"uid-1", "default", "db"},
		// The fields are separated: moving a character across them changes the token.
		{"uid-1d", "efault", "web"},
	} {
		if CheckChannelToken(key, tok, c.uid, c.ns, c.name) {
			t.Errorf("the token of uid-1 default/web passes for %s %s/%s", c.uid, c.ns, c.name)
		}
	}
	other := []byte(strings.Repeat("o", ChannelKeySize))
	if CheckChannelToken(other, tok, "uid-1", "default", "web") {
		t.Error("a token made with another key passes")
	}
	if CheckChannelToken(key, "", "uid-1", "default", "web") {
		t.Error("an empty token passes")
	}
}

func TestLoadChannelKey(t *testing.T) {
	dir := t.TempDir()
	raw := []byte(strings.Repeat("r", ChannelKeySize))
	hexed := hex.EncodeToString([]byte(strings.Repeat("h", ChannelKeySize))) + "\n"
	for name, content := range map[string][]byte{"raw": raw, "hex": []byte(hexed)} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := LoadChannelKey(p)
		if err != nil || len(k) != ChannelKeySize {
			t.Errorf("%s key: %d bytes, %v", name, len(k), err)
		}
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("too short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadChannelKey(short); err == nil || !strings.Contains(err.Error(), "32 random bytes or 64 hex digits") {
		t.Errorf("a short key file: %v, want an error saying what the file must hold", err)
	}
	if _, err := LoadChannelKey(filepath.Join(dir, "absent")); err == nil {
		t.Error("a missing key file loads")
	}
}
