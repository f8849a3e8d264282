package bus

import (
	"fmt"
	"strings"
)

// route is where an event type travels: its NATS subject and the stream
// that stores it.
type route struct {
	Subject string
	Stream  string
}

// streamOfDomain maps the domain part of a subject (pv.<domain>.…) to the
// stream that captures it.
var streamOfDomain = map[string]string{
	"pod":       StreamPods,
	"image":     StreamImages,
	"network":   StreamNetworks,
	"migration": StreamMigrations,
	"host":      StreamHosts,
}

// routeOf derives the subject and stream of a CloudEvent type by the naming
// rule of the catalog: io.podvisor.<domain>.<event>.v<N> travels on
// pv.<domain>.<event>. The version stays out of the subject so that a .v2
// type shares the stream and consumers of .v1 keep working.
func routeOf(ceType string) (route, error) {
	const prefix = "io.podvisor."
	rest, ok := strings.CutPrefix(ceType, prefix)
	if !ok {
		return route{}, fmt.Errorf("type %q: not a podvisor event (want io.podvisor.<domain>.<event>.v<N>)", ceType)
	}
	dot := strings.LastIndexByte(rest, '.')
	if dot < 0 || !isVersion(rest[dot+1:]) {
		return route{}, fmt.Errorf("type %q: missing version suffix .v<N>", ceType)
	}
	name := rest[:dot]
	domain, event, ok := strings.Cut(name, ".")
	if !ok || event == "" {
		return route{}, fmt.Errorf("type %q: want io.podvisor.<domain>.<event>.v<N>", ceType)
	}
	stream, ok := streamOfDomain[domain]
	if !ok {
		return route{}, fmt.Errorf("type %q: unknown domain %q", ceType, domain)
	}
	for _, tok := range strings.Split(name, ".") {
		if !validToken(tok) {
			return route{}, fmt.Errorf("type %q: element %q is not a lowercase word", ceType, tok)
		}
	}
	return route{Subject: "pv." + name, Stream: stream}, nil
}

func isVersion(s string) bool {
	if len(s) < 2 || s[0] != 'v' {
		return false
	}
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
