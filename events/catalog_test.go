package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestSamples decodes every testdata sample through Decode and checks that
// the catalog and the samples match one to one.
func TestSamples(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	if err != nil {
		t.Fatal(err)
	}
	samples := map[string]string{}
	for _, f := range files {
		samples[strings.TrimSuffix(filepath.Base(f), ".json")] = f
	}
	for _, k := range Kinds() {
		if _, ok := samples[k.Type]; !ok {
			t.Errorf("catalog type %s has no sample testdata/%s.json", k.Type, k.Type)
		}
	}
	for ceType, f := range samples {
		t.Run(ceType, func(t *testing.T) {
			k, ok := Lookup(ceType)
			if !ok {
				t.Fatalf("sample %s is not named after a catalog type", f)
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			v, err := Decode(ceType, data)
			if err != nil {
				t.Fatalf("decode sample: %v", err)
			}
			if got, want := reflect.TypeOf(v), reflect.TypeOf(k.New()); got != want {
				t.Fatalf("Decode returned %v, want %v", got, want)
			}
			// The sample must survive a round trip unchanged (up to zero
			// values), which proves every field has the json tag the sample
			// uses in both directions.
			out, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, data, out) {
				t.Errorf("round trip changed the sample:\n in: %s\nout: %s", compact(t, data), out)
			}
			if v.(Payload).ObjectKey() == "" {
				t.Errorf("ObjectKey of the sample is empty")
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(prune(x), prune(y))
}

// prune drops false, empty objects and empty arrays, which omitempty and
// the Kubernetes types (status: {}) add or remove without changing meaning.
func prune(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range t {
			if e = prune(e); e != nil {
				out[k] = e
			}
		}
		if len(out) == 0 {
			return nil
		}
		return out
	case []any:
		if len(t) == 0 {
			return nil
		}
		for i := range t {
			t[i] = prune(t[i])
		}
		return t
	case bool:
		if !t {
			return nil
		}
	}
	return v
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestCatalogIsConsistent(t *testing.T) {
	streams := StreamSubjects()
	seenSubject := map[string]string{}
	for _, k := range Kinds() {
		// io.podvisor.<domain>.<event>.v1 <-> pv.<domain>.<event>
		rest, ok := strings.CutPrefix(k.Type, "io.podvisor.")
		if !ok || !strings.HasSuffix(rest, ".v1") {
			t.Errorf("%s: type must be io.podvisor.<domain>.<event>.v1", k.Type)
			continue
		}
		if want := "pv." + strings.TrimSuffix(rest, ".v1"); k.Subject != want {
			t.Errorf("%s: subject %s, want %s", k.Type, k.Subject, want)
		}
		filter, ok := streams[k.Stream]
		if !ok {
			t.Errorf("%s: unknown stream %s", k.Type, k.Stream)
		} else if !strings.HasPrefix(k.Subject, strings.TrimSuffix(filter, ">")) {
			t.Errorf("%s: subject %s is not captured by stream %s (%s)", k.Type, k.Subject, k.Stream, filter)
		}
		if other, dup := seenSubject[k.Subject]; dup {
			t.Errorf("%s and %s share subject %s", k.Type, other, k.Subject)
		}
		seenSubject[k.Subject] = k.Type
		v := k.New()
		if reflect.TypeOf(v).Kind() != reflect.Pointer {
			t.Errorf("%s: New returns %T, want a pointer", k.Type, v)
		}
		if _, ok := v.(Payload); !ok {
			t.Errorf("%s: %T does not implement Payload", k.Type, v)
		}
		if k.New() == v {
			t.Errorf("%s: New returns the same value twice", k.Type)
		}
	}
	if got := len(Kinds()); got != 82 {
		t.Errorf("catalog has %d types, want 82 (update this test when adding one)", got)
	}
}

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		name   string
		ceType string
		data   string
		want   []string // substrings the error must contain
	}{
		{"unknown type", "io.podvisor.pod.exploded.v1", `{}`, []string{"unknown event type"}},
		{"empty data", TypeHostUncordoned, ``, []string{"empty data"}},
		{"not json", TypeHostUncordoned, `{"name":`, []string{"invalid JSON"}},
		{"trailing data", TypeHostUncordoned, `{"name":"h1"} {"name":"h2"}`, []string{"invalid JSON"}},
		{"unknown field", TypeHostUncordoned, `{"name":"h1","nmae":"h2"}`, []string{"nmae: Forbidden: unknown field"}},
		{"wrong case", TypeHostUncordoned, `{"Name":"h1"}`, []string{"Name: Forbidden: unknown field"}},
		{"duplicate field", TypeHostUncordoned, `{"name":"h1","name":"h2"}`, []string{"name: Forbidden: duplicate field"}},
		{"wrong type", TypeHostDrained, `{"name":"h1","migrated":"3"}`, []string{"migrated: wrong JSON type: got string, want int"}},
		{"wrong type in a map", TypePodRequested,
			`{"pod":{"metadata":{"name":"web","labels":{"a":"b","tier":1}},"spec":{"containers":[{"name":"a","image":"nginx"}]}}}`,
			[]string{"pod.metadata.labels[tier]: wrong JSON type: got number, want string"}},
		{"wrong type in the second container", TypePodRequested,
			`{"pod":{"metadata":{"name":"web"},"spec":{"containers":[{"name":"a","image":"nginx"}, {"name":"b","image":"nginx","ports":[{"containerPort":"80"}]}]}}}`,
			[]string{"pod.spec.containers[1].ports[0].containerPort: wrong JSON type: got string, want int32"}},
		{"invalid after decode", TypeHostUncordoned, `{"name":""}`, []string{"name: Required value"}},
		{"unknown field in pod", TypePodRequested,
			`{"pod":{"metadata":{"name":"web"},"spec":{"containers":[{"name":"a","image":"nginx","imagePullPolcy":"Always"}]}}}`,
			[]string{"pod.spec.containers[0].imagePullPolcy: Forbidden: unknown field"}},
		{"bad quantity in pod", TypePodRequested,
			`{"pod":{"metadata":{"name":"web"},"spec":{"containers":[{"name":"a","image":"nginx"},{"name":"b","image":"nginx","resources":{"requests":{"memory":"12Gx"}}}]}}}`,
			[]string{`pod.spec.containers[1].resources.requests.memory: Invalid value: "12Gx": invalid quantity`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Decode(tt.ceType, []byte(tt.data))
			if err == nil {
				t.Fatalf("Decode succeeded with %#v, want an error", v)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestDecodeErrorsAreTyped(t *testing.T) {
	_, err := Decode("io.podvisor.nope.v1", []byte(`{}`))
	if !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v is not ErrUnknownType", err)
	}
	big := []byte(`{"name":"` + strings.Repeat("h", MaxEventSize) + `"}`)
	if _, err := Decode(TypeHostUncordoned, big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("large event: %v is not ErrTooLarge", err)
	}
	_, err = Decode(TypePodRejected, []byte(`{"namespace":"default","reason":"not camel","message":""}`))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("invalid payload: %v is not a *ValidationError", err)
	}
	if got := ve.Field(); got != "reason" {
		t.Errorf("first field %q, want reason", got)
	}
	if len(ve.Errors) != 2 {
		t.Errorf("got %d field errors (%v), want 2 (reason, message)", len(ve.Errors), ve)
	}
}

func TestLookup(t *testing.T) {
	k, ok := Lookup(TypePodImagesReady)
	if !ok || k.Subject != SubjectPodImagesReady || k.Stream != StreamPods {
		t.Fatalf("Lookup(%s) = %+v, %v", TypePodImagesReady, k, ok)
	}
	if _, ok := k.New().(*PodImagesReady); !ok {
		t.Errorf("New returns %T, want *PodImagesReady", k.New())
	}
	if _, ok := Lookup("io.podvisor.pod.images.ready.v2"); ok {
		t.Errorf("Lookup found a version that does not exist")
	}
}
