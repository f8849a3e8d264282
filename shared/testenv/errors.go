package testenv

import (
	"strings"
	"testing"
)

// CheckErrorMentions checks that err names everything a person needs to fix
// it: it must be non-nil (t stops otherwise) and its message must contain
// each of want (the fields, variables or reasons), every missing one
// reported.
func CheckErrorMentions(t testing.TB, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
}
