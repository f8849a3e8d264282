// Package redact keeps secrets out of what podvisor prints: URLs lose their
// password (GOVC_URL carries vCenter credentials, a Redis URL its password),
// and a log handler applies the same to every message and attribute, so a
// URL logged anywhere (an error from a client library included) shows
// "user:xxxxx@" instead.
package redact

import (
	"context"
	"log/slog"
	"net/url"
	"regexp"
)

// Mask replaces a password.
const Mask = "xxxxx"

// URL returns raw with the password of its user info masked; a value that is
// not a URL with a password is returned as it is.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return String(raw)
	}
	if _, ok := u.User.Password(); !ok {
		return raw
	}
	u.User = url.UserPassword(u.User.Username(), Mask)
	return u.String()
}

// userinfo matches the credentials part of any URL inside a text:
// scheme://user:password@ (the password stops at the first @ after it).
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s'"]*):[^@\s'"/]*@`)

// String masks the password of every URL inside s.
func String(s string) string {
	return userinfo.ReplaceAllString(s, "${1}:"+Mask+"@")
}

// Handler wraps a slog.Handler and masks URL passwords in the message and in
// every string, error and Stringer attribute.
type Handler struct{ next slog.Handler }

// NewHandler wraps next.
func NewHandler(next slog.Handler) *Handler { return &Handler{next: next} }

// Enabled implements slog.Handler.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle implements slog.Handler.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

// WithAttrs implements slog.Handler.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = attr(a)
	}
	return &Handler{next: h.next.WithAttrs(red)}
}

// WithGroup implements slog.Handler.
func (h *Handler) WithGroup(name string) slog.Handler { return &Handler{next: h.next.WithGroup(name)} }

func attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, String(v.String()))
	case slog.KindGroup:
		g := v.Group()
		red := make([]any, len(g))
		for i, x := range g {
			red[i] = attr(x)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, String(x.Error()))
		case interface{ String() string }:
			return slog.String(a.Key, String(x.String()))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
