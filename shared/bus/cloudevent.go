package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

// Header names of the CloudEvents NATS binding in binary mode. Attributes
// and extensions travel as lowercase ce-<name> headers. The data content
// type is written twice, as ce-datacontenttype and as a lowercase
// content-type header, because that is what the official SDKs' NATS
// bindings write and read (sdk-go's nats_jetstream reads both, by exact,
// case-sensitive name); on reading, either is accepted in any case.
const (
	HeaderPrefix      = "ce-"
	HeaderContentType = "content-type"
	// headerDataContentType is the attribute's ce- header.
	headerDataContentType = HeaderPrefix + "datacontenttype"
	// ExtTraceparent is the CloudEvents distributed-tracing extension that
	// carries the W3C traceparent of the flow's start.
	ExtTraceparent = "traceparent"
	ExtTracestate  = "tracestate"
)

// MaxEventSize is the largest encoded event Publish accepts: headers plus
// data. Events carry facts and keys, not blobs; anything bigger belongs in a
// KV bucket or on a datastore with the event pointing at it.
const MaxEventSize = 64 << 10

// ErrNotCloudEvent marks a message that is neither a binary-mode nor a
// structured-mode CloudEvent, or whose attributes are invalid. Consumers
// dead-letter such messages at once: no retry can fix them.
var ErrNotCloudEvent = errors.New("not a CloudEvent")

// ErrTooLarge is returned by Publish for an event over MaxEventSize.
var ErrTooLarge = errors.New("event too large")

// ErrForeignSource: a consumer received a fact whose CloudEvent source is
// not one of the publishers the catalog allows for its type
// (events.SourceAllowed); it is dead-lettered with this reason.
var ErrForeignSource = errors.New("source not allowed for this type")

// effectNamespace seeds the name-based UUIDs of Effect so that podvisor's
// ids cannot collide with another system's SHA-1 UUIDs over the same names.
var effectNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://podvisor.io/events"))

// NewEvent builds a CloudEvent with a random id, the current time and data
// encoded as application/json. Use it for an event that starts a flow (a
// client request, a watch observation); use Effect for an event caused by
// another. data may be a struct, a json.RawMessage or []byte holding JSON,
// or nil for no data.
func NewEvent(source, ceType, subject string, data any) (event.Event, error) {
	return buildEvent(uuid.NewString(), source, ceType, subject, data)
}

// Effect builds the event that a handler publishes as the effect of cause.
// Its id is derived from the cause's id, the producer, the type and the
// subject, so that a handler that runs twice for the same cause (redelivery
// after a crash) publishes the same id and JetStream's de-duplication keeps
// one copy. producer is the source of the new event (podvisor/<service>).
// The cause's traceparent and tracestate extensions are carried over, so the
// whole flow stays one trace.
func Effect(cause event.Event, producer, ceType, subject string, data any) (event.Event, error) {
	return effect(cause, producer, ceType, subject, "", data)
}

// effect is Effect with a discriminator for the several events of one type
// and subject a cause can have (Emit's Distinct). This is the one effect-id
// scheme: every derived id in podvisor comes from here.
func effect(cause event.Event, producer, ceType, subject, disc string, data any) (event.Event, error) {
	if cause.ID() == "" {
		return event.Event{}, errors.New("bus: effect: cause has no id")
	}
	parts := []string{cause.ID(), producer, ceType, subject}
	if disc != "" {
		parts = append(parts, disc)
	}
	id := uuid.NewSHA1(effectNamespace, []byte(strings.Join(parts, "\x00"))).String()
	ev, err := buildEvent(id, producer, ceType, subject, data)
	if err != nil {
		return event.Event{}, err
	}
	for _, ext := range []string{ExtTraceparent, ExtTracestate} {
		if v, ok := cause.Extensions()[ext]; ok {
			ev.SetExtension(ext, v)
		}
	}
	return ev, nil
}

func buildEvent(id, source, ceType, subject string, data any) (event.Event, error) {
	var errs []error
	if source == "" {
		errs = append(errs, errors.New("source: required (podvisor/<service> or the client's name)"))
	}
	if ceType == "" {
		errs = append(errs, errors.New("type: required"))
	} else if _, err := routeOf(ceType); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return event.Event{}, fmt.Errorf("bus: new event: %w", err)
	}
	if err := checkPayloadType(ceType, data); err != nil {
		return event.Event{}, fmt.Errorf("bus: new event: %w", err)
	}
	ev := event.New(event.CloudEventsVersionV1)
	ev.SetID(id)
	ev.SetSource(source)
	ev.SetType(ceType)
	if subject != "" {
		ev.SetSubject(subject)
	}
	ev.SetTime(time.Now().UTC())
	if data != nil {
		if raw, ok := data.(json.RawMessage); ok {
			data = []byte(raw)
		}
		if raw, ok := data.([]byte); ok && !json.Valid(raw) {
			return event.Event{}, fmt.Errorf("bus: new event %s: data: not valid JSON", ceType)
		}
		if err := ev.SetData(event.ApplicationJSON, data); err != nil {
			return event.Event{}, fmt.Errorf("bus: new event %s: data: %w", ceType, err)
		}
	}
	return ev, nil
}

// checkPayloadType catches a catalog payload struct given with the wrong
// type (PodRequested data on a pod.accepted event), which every consumer
// would otherwise reject one by one.
func checkPayloadType(ceType string, data any) error {
	if _, ok := data.(events.Payload); !ok {
		if data == nil || reflect.TypeOf(data).Kind() == reflect.Pointer {
			return nil
		}
		// A payload struct passed by value has its methods on the pointer.
		if _, ok := reflect.New(reflect.TypeOf(data)).Interface().(events.Payload); !ok {
			return nil
		}
	}
	k, ok := events.Lookup(ceType)
	if !ok {
		return nil
	}
	want := reflect.TypeOf(k.New()).Elem()
	got := reflect.TypeOf(data)
	if got.Kind() == reflect.Pointer {
		got = got.Elem()
	}
	if got != want {
		return fmt.Errorf("data: %s is not the payload of %s (want %s)", got, ceType, want)
	}
	return nil
}

// natsSpecs maps CloudEvents attributes to NATS header names: lowercase ce-*
// and Content-Type for datacontenttype. Header lookups on the read side are
// case-insensitive, because NATS headers are case-sensitive and other
// publishers (the nats CLI, other SDKs) do not all agree on case.
var natsSpecs = spec.WithPrefixMatchExact(func(name string) string {
	if name == "datacontenttype" {
		return "content-type"
	}
	return HeaderPrefix + name
}, HeaderPrefix)

// encodeBinary writes ev as a NATS message in binary content mode.
func encodeBinary(ctx context.Context, ev *event.Event, subject string) (*nats.Msg, error) {
	msg := nats.NewMsg(subject)
	w := (*binaryWriter)(msg)
	if _, err := binding.Write(binding.WithForceBinary(ctx), binding.ToMessage(ev), nil, w); err != nil {
		return nil, err
	}
	if ev.DataContentType() == "" && len(msg.Data) > 0 {
		msg.Header.Set(HeaderContentType, event.ApplicationJSON)
		msg.Header.Set(headerDataContentType, event.ApplicationJSON)
	}
	return msg, nil
}

// binaryWriter is a binding.BinaryWriter onto a NATS message.
type binaryWriter nats.Msg

var _ binding.BinaryWriter = (*binaryWriter)(nil)

func (w *binaryWriter) Start(context.Context) error { return nil }
func (w *binaryWriter) End(context.Context) error   { return nil }

func (w *binaryWriter) SetData(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	w.Data = data
	return nil
}

func (w *binaryWriter) SetAttribute(attr spec.Attribute, value any) error {
	names := []string{HeaderPrefix + attr.Name()}
	if attr.Kind() == spec.DataContentType {
		names = append(names, HeaderContentType)
	}
	for _, name := range names {
		if value == nil {
			w.Header.Del(name)
			continue
		}
		s, err := types.Format(value)
		if err != nil {
			return fmt.Errorf("attribute %s: %w", attr.Name(), err)
		}
		w.Header.Set(name, s)
	}
	return nil
}

func (w *binaryWriter) SetExtension(name string, value any) error {
	key := HeaderPrefix + strings.ToLower(name)
	if value == nil {
		w.Header.Del(key)
		return nil
	}
	s, err := types.Format(value)
	if err != nil {
		return fmt.Errorf("extension %s: %w", name, err)
	}
	w.Header.Set(key, s)
	return nil
}

// DecodeMessage reads a CloudEvent from a NATS message in either content
// mode: binary (ce-* headers, the data as the body) or structured
// (Content-Type application/cloudevents+json, the whole event as the body;
// a body holding a JSON CloudEvent with no headers at all, as a bare
// `nats pub` sends it, is read as structured too). m is a jetstream.Msg, a
// *nats.Msg or a *jetstream.RawStreamMsg. Errors wrap ErrNotCloudEvent.
func DecodeMessage(m any) (event.Event, error) {
	switch v := m.(type) {
	case jetstream.Msg:
		return DecodeHeaders(v.Headers(), v.Data())
	case *nats.Msg:
		return DecodeHeaders(v.Header, v.Data)
	case *jetstream.RawStreamMsg:
		return DecodeHeaders(v.Header, v.Data)
	case nil:
		return event.Event{}, fmt.Errorf("%w: nil message", ErrNotCloudEvent)
	default:
		return event.Event{}, fmt.Errorf("bus: decode: unsupported message type %T (want jetstream.Msg, *nats.Msg or *jetstream.RawStreamMsg)", m)
	}
}

// DecodeHeaders is DecodeMessage for headers and body already taken apart.
func DecodeHeaders(h nats.Header, data []byte) (event.Event, error) {
	msg := newNATSMessage(h, data)
	if msg.ReadEncoding() == binding.EncodingUnknown && msg.unknownVersion != "" {
		return event.Event{}, fmt.Errorf("%w: %sspecversion %q is not supported (want 1.0)", ErrNotCloudEvent, HeaderPrefix, msg.unknownVersion)
	}
	if msg.ReadEncoding() == binding.EncodingUnknown {
		return event.Event{}, fmt.Errorf("%w: no %sspecversion header and no %s body", ErrNotCloudEvent, HeaderPrefix, event.ApplicationCloudEventsJSON)
	}
	if msg.format != nil && msg.format != format.JSON {
		return event.Event{}, fmt.Errorf("%w: unsupported structured format %s", ErrNotCloudEvent, msg.format.MediaType())
	}
	ev, err := binding.ToEvent(context.Background(), msg)
	if err != nil {
		if msg.format != nil {
			return event.Event{}, fmt.Errorf("%w: structured CloudEvent body: %v", ErrNotCloudEvent, err)
		}
		return event.Event{}, fmt.Errorf("%w: %v", ErrNotCloudEvent, err)
	}
	if err := ev.Validate(); err != nil {
		return event.Event{}, fmt.Errorf("%w: %v", ErrNotCloudEvent, err)
	}
	return *ev, nil
}

// natsMessage is a binding.Message over a NATS message's headers and body.
type natsMessage struct {
	headers map[string]string // lowercased names, first value
	data    []byte
	version spec.Version
	format  format.Format
	// unknownVersion is a ce-specversion header this SDK does not speak.
	unknownVersion string
}

var _ binding.Message = (*natsMessage)(nil)

func newNATSMessage(h nats.Header, data []byte) *natsMessage {
	m := &natsMessage{headers: make(map[string]string, len(h)), data: data}
	for k, v := range h {
		if len(v) > 0 {
			m.headers[strings.ToLower(k)] = v[0]
		}
	}
	if sv, ok := m.headers[HeaderPrefix+"specversion"]; ok {
		m.version = natsSpecs.Version(sv)
		if m.version != nil {
			return m
		}
		m.unknownVersion = sv
	}
	if ct := m.headers["content-type"]; format.IsFormat(strings.ToLower(ct)) {
		m.format = format.Lookup(ct)
		return m
	}
	// A bare publish (no headers) of a JSON object that has a specversion
	// member is a structured event from a tool that cannot set headers. So
	// is a bare body that starts like a JSON object but does not parse (cut
	// off, say): its reason is then the JSON error, not a missing header.
	if len(h) == 0 && looksStructured(data) {
		m.format = format.JSON
	}
	return m
}

func looksStructured(data []byte) bool {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return false
	}
	var probe struct {
		SpecVersion string `json:"specversion"`
	}
	var syntaxErr *json.SyntaxError
	if err := json.Unmarshal(data, &probe); err != nil {
		return errors.As(err, &syntaxErr)
	}
	return probe.SpecVersion != ""
}

func (m *natsMessage) ReadEncoding() binding.Encoding {
	switch {
	case m.version != nil:
		return binding.EncodingBinary
	case m.format != nil:
		return binding.EncodingStructured
	default:
		return binding.EncodingUnknown
	}
}

func (m *natsMessage) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	if m.format == nil {
		return binding.ErrNotStructured
	}
	return w.SetStructuredEvent(ctx, m.format, bytes.NewReader(m.data))
}

func (m *natsMessage) ReadBinary(ctx context.Context, w binding.BinaryWriter) error {
	if m.version == nil {
		return binding.ErrNotBinary
	}
	for k, v := range m.headers {
		if k == headerDataContentType {
			// Binary mode as other SDKs write it: the attribute as a ce-
			// header beside content-type. content-type wins when both
			// are present, as the binding specifies.
			if _, ok := m.headers["content-type"]; !ok {
				if err := w.SetAttribute(m.version.AttributeFromKind(spec.DataContentType), v); err != nil {
					return fmt.Errorf("header %s: %w", k, err)
				}
			}
			continue
		}
		if attr := m.version.Attribute(k); attr != nil {
			if err := w.SetAttribute(attr, v); err != nil {
				return fmt.Errorf("header %s: %w", k, err)
			}
			continue
		}
		if name, ok := strings.CutPrefix(k, HeaderPrefix); ok && name != "" {
			if err := w.SetExtension(name, v); err != nil {
				return fmt.Errorf("header %s: %w", k, err)
			}
		}
	}
	if len(m.data) > 0 {
		return w.SetData(bytes.NewReader(m.data))
	}
	return nil
}

func (m *natsMessage) Finish(error) error { return nil }

var _ binding.MessageMetadataReader = (*natsMessage)(nil)

func (m *natsMessage) GetAttribute(k spec.Kind) (spec.Attribute, any) {
	if m.version == nil {
		return nil, nil
	}
	attr := m.version.AttributeFromKind(k)
	if attr == nil {
		return nil, nil
	}
	name := HeaderPrefix + attr.Name()
	if k == spec.DataContentType {
		name = "content-type"
	}
	if v, ok := m.headers[name]; ok {
		return attr, v
	}
	if k == spec.DataContentType {
		if v, ok := m.headers[headerDataContentType]; ok {
			return attr, v
		}
	}
	return attr, nil
}

func (m *natsMessage) GetExtension(name string) any {
	if strings.EqualFold(name, "datacontenttype") {
		return nil // an attribute, not an extension
	}
	if v, ok := m.headers[HeaderPrefix+strings.ToLower(name)]; ok {
		return v
	}
	return nil
}

// encodedSize is the wire size of a message's headers and body, which is
// what MaxEventSize limits.
func encodedSize(msg *nats.Msg) int {
	n := len(msg.Data) + len("NATS/1.0\r\n\r\n")
	for k, vs := range msg.Header {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}
