package bus_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/shared/bus"
)

// FuzzDecodeHeaders: CloudEvent header parsing (binary mode, ce-*
// headers) and structured bodies never panic, and what is accepted is a
// valid CloudEvent. Run by .ci/run for a fixed time.
func FuzzDecodeHeaders(f *testing.F) {
	f.Add("1.0", "io.podvisor.pod.requested.v1", "podvisor/cli", "id-1", "default/web", "application/json", "", []byte(`{"pod":{}}`))
	f.Add("", "", "", "", "", "application/cloudevents+json", "", []byte(`{"specversion":"1.0","type":"io.podvisor.pod.requested.v1","source":"me","id":"1","data":{"a":1}}`))
	f.Add("0.3", "x", "y", "z", "", "text/plain", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", []byte("hi"))
	f.Add("1.0", "io.podvisor.pod.accepted.v1", "podvisor/provisioner", "", "", "", "garbage", []byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, spec, ceType, source, id, subject, contentType, traceparent string, data []byte) {
		h := nats.Header{}
		set := func(k, v string) {
			if v != "" {
				h.Set(k, v)
			}
		}
		set(bus.HeaderPrefix+"specversion", spec)
		set(bus.HeaderPrefix+"type", ceType)
		set(bus.HeaderPrefix+"source", source)
		set(bus.HeaderPrefix+"id", id)
		set(bus.HeaderPrefix+"subject", subject)
		set(bus.HeaderPrefix+"traceparent", traceparent)
		set("Content-Type", contentType)
		ev, err := bus.DecodeHeaders(h, data)
		if err != nil {
			return
		}
		if err := ev.Validate(); err != nil {
			t.Fatalf("accepted an invalid CloudEvent: %v (headers %v)", err, h)
		}
	})
}
