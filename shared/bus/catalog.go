package bus

import (
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
)

// route is where an event type travels: its NATS subject and the stream
// that stores it.
type route struct {
	Subject string
	Stream  string
	kind    events.Kind
}

// routeOf looks the type up in the event catalog.
func routeOf(ceType string) (route, error) {
	k, ok := events.Lookup(ceType)
	if !ok {
		return route{}, fmt.Errorf("type %q: %w (not in the podvisor event catalog)", ceType, events.ErrUnknownType)
	}
	return route{Subject: k.Subject, Stream: k.Stream, kind: k}, nil
}

// subjectOf is the NATS subject of one event: the type's, or for a
// per-object type (events.Kind.PerObject) the type's followed by the
// event's subject attribute, which must then make valid subject tokens.
func (rt route) subjectOf(ev *event.Event) (string, error) {
	if !rt.kind.PerObject {
		return rt.Subject, nil
	}
	key := ev.Subject()
	for _, tok := range strings.Split(key, ".") {
		if tok == "" || strings.ContainsAny(tok, " \t\r\n*>") {
			return "", fmt.Errorf("subject attribute %q: must be NATS subject tokens (no empty token, space, '*' or '>') to route %s", key, rt.kind.Type)
		}
	}
	return rt.kind.SubjectFor(key), nil
}

// carries reports whether an event came on its own subject.
func (rt route) carries(ev *event.Event, subject string) bool {
	want, err := rt.subjectOf(ev)
	return err == nil && want == subject
}

// knownEvents holds the catalog's types without their version suffix
// (io.podvisor.pod.accepted), to recognise a later version of a known event.
var knownEvents = func() map[string]events.Kind {
	m := map[string]events.Kind{}
	for _, k := range events.Kinds() {
		if base, ok := unversioned(k.Type); ok {
			m[base] = k
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
	return ok && known.Carries(subject)
}
