package bus

import (
	"fmt"
	"strings"

	"github.com/podvisor/podvisor/events"
)

// route is where an event type travels: its NATS subject and the stream
// that stores it.
type route struct {
	Subject string
	Stream  string
}

// routeOf looks the type up in the event catalog.
func routeOf(ceType string) (route, error) {
	k, ok := events.Lookup(ceType)
	if !ok {
		return route{}, fmt.Errorf("type %q: %w (not in the podvisor event catalog)", ceType, events.ErrUnknownType)
	}
	return route{Subject: k.Subject, Stream: k.Stream}, nil
}

// knownEvents holds the catalog's types without their version suffix
// (io.podvisor.pod.accepted), to recognise a later version of a known event.
var knownEvents = func() map[string]string {
	m := map[string]string{}
	for _, k := range events.Kinds() {
		if base, ok := unversioned(k.Type); ok {
			m[base] = k.Subject
		}
	}
	return m
}()

// unversioned strips the .v<N> suffix of a CloudEvent type.
func unversioned(ceType string) (string, bool) {
	dot := strings.LastIndexByte(ceType, '.')
	if dot < 0 {
		return "", false
	}
	v := ceType[dot+1:]
	if len(v) < 2 || v[0] != 'v' {
		return "", false
	}
	for _, c := range v[1:] {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	return ceType[:dot], true
}

// laterVersion reports whether ceType is another version of a catalog event
// on the same subject (io.podvisor.pod.accepted.v2 beside .v1): during a
// version migration producers publish both, and a consumer that does not
// know the new one yet skips it rather than dead-letter it.
func laterVersion(ceType, subject string) bool {
	base, ok := unversioned(ceType)
	if !ok {
		return false
	}
	known, ok := knownEvents[base]
	return ok && known == subject
}
