package allinone

import (
	"context"
	"log/slog"
	"strings"
	"sync"

	"github.com/podvisor/podvisor/cmd/internal/dashboard"
)

// logRing keeps the process's most recent log records (info and above) so
// that the status page can show the lines about one pod without a log
// backend: in `podvisor up` every service logs through this one logger.
type logRing struct {
	next  slog.Handler
	attrs []slog.Attr // from WithAttrs, for the kept copy
	ring  *ringBuffer
}

// LogLine is one kept record, as the dashboard's logs page shows it.
type LogLine = dashboard.LogLine

type ringBuffer struct {
	mu    sync.Mutex
	lines []LogLine
	start int
	size  int
}

func newLogRing(next slog.Handler, size int) *logRing {
	return &logRing{next: next, ring: &ringBuffer{size: size}}
}

func (h *logRing) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *logRing) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		line := LogLine{Time: r.Time, Level: r.Level.String(), Message: r.Message, Attrs: append([]slog.Attr(nil), h.attrs...)}
		r.Attrs(func(a slog.Attr) bool { line.Attrs = append(line.Attrs, a); return true })
		h.ring.add(line)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *logRing) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &logRing{next: h.next.WithAttrs(attrs), attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...), ring: h.ring}
}

// WithGroup keeps the ring flat: group names are not needed to find a pod.
func (h *logRing) WithGroup(name string) slog.Handler {
	return &logRing{next: h.next.WithGroup(name), attrs: h.attrs, ring: h.ring}
}

func (b *ringBuffer) add(l LogLine) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.lines) < b.size {
		b.lines = append(b.lines, l)
		return
	}
	b.lines[b.start] = l
	b.start = (b.start + 1) % b.size
}

// find returns the kept lines, oldest first, that have an attribute whose
// value is one of values.
func (b *ringBuffer) find(values ...string) []LogLine {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []LogLine
	for i := range b.lines {
		l := b.lines[(b.start+i)%len(b.lines)]
		if mentions(l.Attrs, values) {
			out = append(out, l)
		}
	}
	return out
}

func mentions(attrs []slog.Attr, values []string) bool {
	for _, a := range attrs {
		v := a.Value.Resolve()
		if v.Kind() == slog.KindGroup {
			if mentions(v.Group(), values) {
				return true
			}
			continue
		}
		s := v.String()
		for _, want := range values {
			if strings.EqualFold(s, want) {
				return true
			}
		}
	}
	return false
}
