package cli

import (
	"strings"
	"testing"
)

// A manifest with a key given twice in one mapping is refused, naming the
// key and both lines, as kubectl does; the last one does not win silently.
func TestParseSourceRefusesADuplicateKey(t *testing.T) {
	doc := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\nmetadata:\n  name: b\nspec:\n  containers: [{name: c, image: busybox}]\n"
	_, err := parseSource("pod.yaml", strings.NewReader(doc))
	if err == nil || !strings.Contains(err.Error(), "pod.yaml: document 1") || !strings.Contains(err.Error(), "metadata") ||
		!strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "line 5") {
		t.Fatalf("parse of a document setting metadata twice: %v, want an error naming the key and both lines", err)
	}
	if src, err := parseSource("pod.yaml", strings.NewReader(strings.Replace(doc, "metadata:\n  name: b\n", "", 1))); err != nil || len(src.docs) != 1 {
		t.Fatalf("the same document without the duplicate: %v, %d documents", err, len(src.docs))
	}
}
