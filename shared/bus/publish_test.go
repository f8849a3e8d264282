package bus_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

func TestPublishWritesBinaryModeHeaders(t *testing.T) {
	b := bustest.Start(t)
	ev := mustEvent(t, typePodRequested, "default/web", map[string]any{"uid": "u-1"})
	mustPublish(t, b, ev)

	msgs := streamMsgs(t, b, events.StreamPods)
	if len(msgs) != 1 {
		t.Fatalf("PODS holds %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Subject != "pv.pod.requested" {
		t.Errorf("subject = %q, want pv.pod.requested", m.Subject)
	}
	want := map[string]string{
		"ce-specversion":     "1.0",
		"ce-type":            typePodRequested,
		"ce-source":          "podvisor/client",
		"ce-id":              ev.ID(),
		"ce-subject":         "default/web",
		"content-type":       "application/json",
		"ce-datacontenttype": "application/json",
		"Nats-Msg-Id":        ev.ID(),
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, m.Header.Get("ce-time")); err != nil {
		t.Errorf("ce-time %q: %v", m.Header.Get("ce-time"), err)
	}
	if string(m.Data) != `{"uid":"u-1"}` {
		t.Errorf("body = %s, want the bare data", m.Data)
	}

	got, err := bus.DecodeMessage(m)
	if err != nil {
		t.Fatalf("DecodeMessage: %v", err)
	}
	if got.ID() != ev.ID() || got.Type() != ev.Type() || got.Subject() != ev.Subject() || string(got.Data()) != string(ev.Data()) {
		t.Errorf("decoded %v, want %v", got, ev)
	}
}

func TestPublishSameIDTwiceStoresOnce(t *testing.T) {
	b := bustest.Start(t)
	cause := mustEvent(t, typePodRequested, "default/web", map[string]any{"uid": "u-1"})
	mustPublish(t, b, cause)

	// A handler that runs twice for one cause (redelivery after a crash)
	// builds the same effect id both times.
	first, err := bus.Effect(cause, "podvisor/provisioner", typePodAccepted, "default/web", map[string]any{"uid": "u-1"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // a different ce-time must not matter
	second, err := bus.Effect(cause, "podvisor/provisioner", typePodAccepted, "default/web", map[string]any{"uid": "u-1"})
	if err != nil {
		t.Fatal(err)
	}
	if first.ID() != second.ID() {
		t.Fatalf("Effect ids differ for one cause: %s vs %s", first.ID(), second.ID())
	}
	mustPublish(t, b, first)
	mustPublish(t, b, second)
	mustPublish(t, b, cause)

	if n := len(streamMsgs(t, b, events.StreamPods)); n != 2 {
		t.Errorf("PODS holds %d messages after publishing cause twice and its effect twice, want 2", n)
	}
}

func TestEffectID(t *testing.T) {
	cause := mustEvent(t, typePodRequested, "default/web", nil)
	cause.SetExtension("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	base, err := bus.Effect(cause, "podvisor/provisioner", typePodAccepted, "default/web", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := base.Extensions()["traceparent"]; got != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("effect traceparent = %v, want the cause's", got)
	}
	other := mustEvent(t, typePodRequested, "default/web", nil)
	tests := []struct {
		name                      string
		cause                     event.Event
		producer, ceType, subject string
	}{
		{"another cause", other, "podvisor/provisioner", typePodAccepted, "default/web"},
		{"another producer", cause, "podvisor/scheduler", typePodAccepted, "default/web"},
		{"another type", cause, "podvisor/provisioner", "io.podvisor.pod.rejected.v1", "default/web"},
		{"another subject", cause, "podvisor/provisioner", typePodAccepted, "default/db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := bus.Effect(tt.cause, tt.producer, tt.ceType, tt.subject, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ev.ID() == base.ID() {
				t.Errorf("id %s equals the base effect's", ev.ID())
			}
		})
	}
}

func TestNewEventRejectsBadInput(t *testing.T) {
	tests := []struct {
		name, source, ceType string
		data                 any
		wantIn               string
	}{
		{"no source", "", typePodRequested, nil, "source"},
		{"no type", "podvisor/test", "", nil, "type"},
		{"foreign type", "podvisor/test", "com.example.thing.v1", nil, "unknown event type"},
		{"no version", "podvisor/test", "io.podvisor.pod.requested", nil, "unknown event type"},
		{"unknown event", "podvisor/test", "io.podvisor.cat.fed.v1", nil, "unknown event type"},
		{"payload of another type", "podvisor/test", typePodAccepted, events.PodRequested{}, "events.PodRequested is not the payload of io.podvisor.pod.accepted.v1"},
		{"payload pointer of another type", "podvisor/test", typePodAccepted, &events.PodRejected{}, "events.PodRejected is not the payload"},
		{"bad json bytes", "podvisor/test", typePodRequested, []byte("{nope"), "not valid JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bus.NewEvent(tt.source, tt.ceType, "k", tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("err = %v, want one mentioning %q", err, tt.wantIn)
			}
		})
	}
}

func TestPublishRefusesEventsOver64KiB(t *testing.T) {
	b := bustest.Start(t)
	ctx := testContext(t)

	fits := mustEvent(t, typePodRequested, "default/fits", map[string]string{"pad": strings.Repeat("x", 60<<10)})
	if err := b.Publish(ctx, fits); err != nil {
		t.Fatalf("a 60 KiB event was refused: %v", err)
	}
	big := mustEvent(t, typePodRequested, "default/big", map[string]string{"pad": strings.Repeat("x", 64<<10)})
	err := b.Publish(ctx, big)
	if !errors.Is(err, bus.ErrTooLarge) {
		t.Fatalf("Publish of a 64 KiB+ event: err = %v, want ErrTooLarge", err)
	}
	if !strings.Contains(err.Error(), "limit 65536") {
		t.Errorf("error %q does not state the limit", err)
	}
	if n := len(streamMsgs(t, b, events.StreamPods)); n != 1 {
		t.Errorf("PODS holds %d messages, want only the one that fits", n)
	}
}

func TestPublishRefusesUnknownType(t *testing.T) {
	b := bustest.Start(t)
	ev := event.New()
	ev.SetID("x-1")
	ev.SetSource("podvisor/test")
	ev.SetType("com.example.other.v1")
	err := b.Publish(testContext(t), ev)
	if err == nil || !strings.Contains(err.Error(), "com.example.other.v1") {
		t.Fatalf("err = %v, want one naming the type", err)
	}
}

func TestDecodeHeaders(t *testing.T) {
	structured := `{"specversion":"1.0","id":"s-1","source":"nats-cli","type":"io.podvisor.pod.requested.v1",` +
		`"subject":"default/web","datacontenttype":"application/json","data":{"uid":"u-9"}}`
	tests := []struct {
		name        string
		header      nats.Header
		data        string
		wantID      string
		wantData    string
		wantErrPart string
	}{
		{
			name:     "binary, lowercase headers",
			header:   nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"b-1"}, "ce-source": {"x"}, "ce-type": {typePodRequested}, "Content-Type": {"application/json"}},
			data:     `{"uid":"u-1"}`,
			wantID:   "b-1",
			wantData: `{"uid":"u-1"}`,
		},
		{
			// What sdk-go's protocol/nats_jetstream/v2 writes: every
			// attribute as a ce- header, ce-datacontenttype included.
			name: "binary as the CloudEvents SDK's NATS binding writes it",
			header: nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"b-3"}, "ce-source": {"sdk"}, "ce-type": {typePodRequested},
				"ce-datacontenttype": {"application/json"}, "content-type": {"application/json"}},
			data:     `{"uid":"u-3"}`,
			wantID:   "b-3",
			wantData: `{"uid":"u-3"}`,
		},
		{
			name:     "binary with only ce-datacontenttype",
			header:   nats.Header{"ce-specversion": {"1.0"}, "ce-id": {"b-4"}, "ce-source": {"sdk"}, "ce-type": {typePodRequested}, "ce-datacontenttype": {"application/json"}},
			data:     `{"uid":"u-4"}`,
			wantID:   "b-4",
			wantData: `{"uid":"u-4"}`,
		},
		{
			name:     "binary, canonical-case headers from another client",
			header:   nats.Header{"Ce-Specversion": {"1.0"}, "Ce-Id": {"b-2"}, "Ce-Source": {"x"}, "Ce-Type": {typePodRequested}},
			data:     `{}`,
			wantID:   "b-2",
			wantData: `{}`,
		},
		{
			name:     "structured, as nats pub -H sends it",
			header:   nats.Header{"Content-Type": {"application/cloudevents+json; charset=utf-8"}},
			data:     structured,
			wantID:   "s-1",
			wantData: `{"uid":"u-9"}`,
		},
		{
			name:     "structured, bare body without headers",
			data:     structured,
			wantID:   "s-1",
			wantData: `{"uid":"u-9"}`,
		},
		{name: "plain JSON", data: `{"uid":"u-1"}`, wantErrPart: "no ce-specversion"},
		{name: "not JSON", data: `hello`, wantErrPart: "no ce-specversion"},
		{
			name:        "binary without id",
			header:      nats.Header{"ce-specversion": {"1.0"}, "ce-source": {"x"}, "ce-type": {typePodRequested}},
			wantErrPart: "id",
		},
		{
			name:        "structured with bad JSON",
			header:      nats.Header{"Content-Type": {"application/cloudevents+json"}},
			data:        `{"specversion":`,
			wantErrPart: "not a CloudEvent",
		},
		{
			// nats pub without -H, the body cut off: the reason is the
			// JSON error, as with the header, not a missing header.
			name:        "structured, bare body cut off",
			data:        " \n" + structured[:60],
			wantErrPart: "not a CloudEvent: structured CloudEvent body: unexpected end of JSON input",
		},
		{
			name:        "structured with the header, body cut off",
			header:      nats.Header{"Content-Type": {"application/cloudevents+json"}},
			data:        structured[:60],
			wantErrPart: "not a CloudEvent: structured CloudEvent body: unexpected end of JSON input",
		},
		{
			name:        "unsupported specversion",
			header:      nats.Header{"ce-specversion": {"2.0"}, "ce-id": {"b-1"}, "ce-source": {"x"}, "ce-type": {typePodRequested}},
			wantErrPart: `specversion "2.0"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := bus.DecodeHeaders(tt.header, []byte(tt.data))
			if tt.wantErrPart != "" {
				if !errors.Is(err, bus.ErrNotCloudEvent) || !strings.Contains(err.Error(), tt.wantErrPart) {
					t.Fatalf("err = %v, want ErrNotCloudEvent mentioning %q", err, tt.wantErrPart)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeHeaders: %v", err)
			}
			if ev.ID() != tt.wantID {
				t.Errorf("id = %q, want %q", ev.ID(), tt.wantID)
			}
			if _, ok := ev.Extensions()["datacontenttype"]; ok {
				t.Errorf("datacontenttype read as an extension: %v", ev.Extensions())
			}
			if tt.header.Get("ce-datacontenttype") != "" && ev.DataContentType() != "application/json" {
				t.Errorf("datacontenttype = %q, want application/json", ev.DataContentType())
			}
			var got, want any
			if err := json.Unmarshal(ev.Data(), &got); err != nil {
				t.Fatalf("data %s: %v", ev.Data(), err)
			}
			_ = json.Unmarshal([]byte(tt.wantData), &want)
			if gotJSON, _ := json.Marshal(got); string(gotJSON) != mustJSON(want) {
				t.Errorf("data = %s, want %s", gotJSON, tt.wantData)
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// A structured-mode event published with plain NATS (what `nats pub -H
// Content-Type:application/cloudevents+json` does) reaches a handler.
func TestConsumeStructuredModeEvent(t *testing.T) {
	b := bustest.Start(t)
	got := make(chan bus.Message, 1)
	startConsume(t, b, bus.ConsumerConfig{Service: "provisioner", Stream: events.StreamPods}, func(_ context.Context, m *bus.Message) error {
		got <- *m
		return nil
	})
	msg := nats.NewMsg("pv.pod.requested")
	msg.Header.Set("Content-Type", "application/cloudevents+json")
	msg.Data = []byte(`{"specversion":"1.0","id":"cli-1","source":"nats-cli","type":"io.podvisor.pod.requested.v1","subject":"default/web","data":{"uid":"u-1"}}`)
	if _, err := b.JetStream().PublishMsg(testContext(t), msg); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Event.ID() != "cli-1" || m.Event.Source() != "nats-cli" || m.Key != "default/web" {
			t.Errorf("handler saw id=%s source=%s key=%s", m.Event.ID(), m.Event.Source(), m.Key)
		}
		if string(m.Event.Data()) != `{"uid":"u-1"}` {
			t.Errorf("data = %s", m.Event.Data())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("structured event never reached the handler")
	}
}
