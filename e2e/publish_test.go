//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A client of podvisor that is not podvisor: CloudEvents built with sdk-go
// and published with nats.go, in the two modes the design promises to
// accept.

const (
	typePodRequested    = "io.podvisor.pod.requested.v1"
	subjectPodRequested = "pv.pod.requested"
)

// newEvent builds and validates a CloudEvent with JSON data.
func newEvent(t *testing.T, id, ceType, subject string, data any) event.Event {
	t.Helper()
	ev := event.New()
	ev.SetID(id)
	ev.SetSource("e2e/client")
	ev.SetType(ceType)
	ev.SetSubject(subject)
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		t.Fatal(err)
	}
	if err := ev.Validate(); err != nil {
		t.Fatalf("event %s: %v", id, err)
	}
	return ev
}

// publishBinary publishes ev in binary mode (attributes as ce-* headers,
// data as the body) through JetStream, with Nats-Msg-Id = the CloudEvent id
// as the design asks of every publisher.
func publishBinary(t *testing.T, js jetstream.JetStream, natsSubject string, ev event.Event) {
	t.Helper()
	m := nats.NewMsg(natsSubject)
	m.Header.Set("ce-specversion", ev.SpecVersion())
	m.Header.Set("ce-id", ev.ID())
	m.Header.Set("ce-source", ev.Source())
	m.Header.Set("ce-type", ev.Type())
	if ev.Subject() != "" {
		m.Header.Set("ce-subject", ev.Subject())
	}
	m.Header.Set("ce-time", time.Now().UTC().Format(time.RFC3339Nano))
	m.Header.Set("Content-Type", event.ApplicationJSON)
	m.Header.Set(jetstream.MsgIDHeader, ev.ID())
	m.Data = ev.Data()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish %s (binary): %v", ev.ID(), err)
	}
}

// publishStructured publishes ev as one JSON document with no headers at
// all, as `nats pub SUBJECT '{"specversion":...}'` does: core NATS, no
// de-duplication id.
func publishStructured(t *testing.T, nc *nats.Conn, natsSubject string, ev event.Event) {
	t.Helper()
	body, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, nc, natsSubject, body)
}

// publishRaw publishes any body on a subject with core NATS and waits for the
// server to have it.
func publishRaw(t *testing.T, nc *nats.Conn, natsSubject string, body []byte) {
	t.Helper()
	if err := nc.Publish(natsSubject, body); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		t.Fatal(err)
	}
}
