package events

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestChainRecordJSONIsLowerCamelCase(t *testing.T) {
	r := ChainRecord{ChainID: "sha256:" + strings.Repeat("a", 64), Datastore: "ds1", Disk: "[ds1] podvisor-images/a/disk.vmdk",
		Layer: "sha256:" + strings.Repeat("b", 64), DiffID: "sha256:" + strings.Repeat("c", 64), Depth: 1, Size: 10,
		State: ChainStateReady, Refs: 2, LastUsed: time.Unix(1, 0).UTC()}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"chainID":`, `"diffID":`, `"lastUsed":`, `"refs":2`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON %s lacks %s", b, want)
		}
	}
	if strings.Contains(string(b), `"parent"`) || strings.Contains(string(b), `"createdAt"`) {
		t.Errorf("JSON %s carries empty optional fields", b)
	}
	var back ChainRecord
	if err := unmarshalStrict(b, &back); err != nil {
		t.Fatalf("strict decode of own JSON: %v", err)
	}
	if back != r {
		t.Fatalf("round trip = %+v, want %+v", back, r)
	}
}

func TestChainRecordKey(t *testing.T) {
	if got := ChainRecordKey("sha256:ab", "ds1"); got != "sha256:ab@ds1" {
		t.Fatalf("ChainRecordKey = %q", got)
	}
}
