package telemetry

import (
	"github.com/podvisor/podvisor/shared/redact"

	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// NewLogger returns a logger writing text (or JSON when json is true) at level.
func NewLogger(w io.Writer, level slog.Level, json bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	// Every line passes redact: a URL with credentials (GOVC_URL, a
	// Redis URL) logged by any part, or inside a library's error, shows
	// its password masked.
	if json {
		return slog.New(redact.NewHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(redact.NewHandler(slog.NewTextHandler(w, opts)))
}

// ParseLevel reads a level name (debug, info, warn, error); empty means info.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if strings.TrimSpace(s) == "" {
		return slog.LevelInfo, nil
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// LoggerFromEnv builds the logger a service process uses: level from
// PODVISOR_LOG_LEVEL, JSON when PODVISOR_LOG_FORMAT=json, written to stderr.
func LoggerFromEnv() (*slog.Logger, error) {
	level, err := ParseLevel(os.Getenv("PODVISOR_LOG_LEVEL"))
	if err != nil {
		return nil, fmt.Errorf("PODVISOR_LOG_LEVEL: %w", err)
	}
	format := os.Getenv("PODVISOR_LOG_FORMAT")
	if format != "" && format != "json" && format != "text" {
		return nil, fmt.Errorf("PODVISOR_LOG_FORMAT: %q: want text or json", format)
	}
	return NewLogger(os.Stderr, level, format == "json"), nil
}
