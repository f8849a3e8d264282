package redact

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://podvisor:s3cret@127.0.0.1:8989/sdk", "https://podvisor:xxxxx@127.0.0.1:8989/sdk"},
		{"rediss://scheduler:p%40ss@127.0.0.1:6380/0", "rediss://scheduler:xxxxx@127.0.0.1:6380/0"},
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"https://user@host/sdk", "https://user@host/sdk"},
		{"not a url", "not a url"},
	}
	for _, tt := range tests {
		if got := URL(tt.in); got != tt.want {
			t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestString(t *testing.T) {
	in := `Post "https://podvisor:s3cret@127.0.0.1:8989/sdk": connection refused; also redis://:pw@h:1/0`
	got := String(in)
	if strings.Contains(got, "s3cret") || strings.Contains(got, ":pw@") {
		t.Errorf("String left a password: %s", got)
	}
	if !strings.Contains(got, "https://podvisor:xxxxx@127.0.0.1:8989/sdk") {
		t.Errorf("String = %s", got)
	}
}

// TestHandler: a password in a message, a string attribute, an error or a
// group never reaches the output.
func TestHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(NewHandler(slog.NewJSONHandler(&buf, nil))).With("url", "https://a:topsecret1@h/sdk")
	log.Info("dial https://a:topsecret2@h/sdk", "err", errors.New("GET https://a:topsecret3@h: refused"),
		slog.Group("g", "u", "https://a:topsecret4@h"))
	out := buf.String()
	if strings.Contains(out, "topsecret") {
		t.Errorf("log line carries a password: %s", out)
	}
	if strings.Count(out, "xxxxx") != 4 {
		t.Errorf("want four masked passwords: %s", out)
	}
}
