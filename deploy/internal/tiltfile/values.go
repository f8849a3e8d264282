package tiltfile

import (
	"fmt"
	"strings"

	"go.starlark.net/starlark"
)

// value carries a recorded Go value through Starlark: what probe(),
// port_forward(), sync() … return and other builtins take.
type value[T any] struct {
	typ string
	v   T
}

func (x value[T]) String() string        { return fmt.Sprintf("%s(%+v)", x.typ, x.v) }
func (x value[T]) Type() string          { return x.typ }
func (value[T]) Freeze()                 {}
func (value[T]) Truth() starlark.Bool    { return true }
func (x value[T]) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable type: %s", x.typ) }

// Blob is Tilt's blob: YAML text, as opposed to a string, which k8s_yaml
// reads as a path.
type Blob string

func (b Blob) String() string        { return string(b) }
func (b Blob) Type() string          { return "blob" }
func (Blob) Freeze()                 {}
func (b Blob) Truth() starlark.Bool  { return len(b) > 0 }
func (b Blob) Hash() (uint32, error) { return starlark.String(b).Hash() }

func triggerValue(m TriggerMode) starlark.Value { return value[TriggerMode]{"trigger_mode", m} }

func triggerMode(fn, arg string, v starlark.Value) (TriggerMode, error) {
	if v == nil || v == starlark.None {
		return TriggerAuto, nil
	}
	m, ok := v.(value[TriggerMode])
	if !ok {
		return 0, fmt.Errorf("%s: %s: got %s, want TRIGGER_MODE_AUTO or TRIGGER_MODE_MANUAL", fn, arg, v.Type())
	}
	return m.v, nil
}

// stringList accepts what Tilt accepts for a list of strings: None, one string,
// or a list or tuple of strings.
func stringList(fn, arg string, v starlark.Value) ([]string, error) {
	switch v := v.(type) {
	case nil, starlark.NoneType:
		return nil, nil
	case starlark.String:
		return []string{string(v)}, nil
	case starlark.Indexable:
		out := make([]string, v.Len())
		for i := range out {
			s, ok := starlark.AsString(v.Index(i))
			if !ok {
				return nil, fmt.Errorf("%s: %s[%d]: got %s, want string", fn, arg, i, v.Index(i).Type())
			}
			out[i] = s
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s: %s: got %s, want string or list of strings", fn, arg, v.Type())
}

// command accepts a shell string or an argv list; lists are joined.
func command(fn, arg string, v starlark.Value) (string, error) {
	parts, err := stringList(fn, arg, v)
	if err != nil {
		return "", err
	}
	return strings.Join(parts, " "), nil
}

func stringMap(fn, arg string, v starlark.Value) (map[string]string, error) {
	if v == nil || v == starlark.None {
		return nil, nil
	}
	d, ok := v.(*starlark.Dict)
	if !ok {
		return nil, fmt.Errorf("%s: %s: got %s, want dict", fn, arg, v.Type())
	}
	out := make(map[string]string, d.Len())
	for _, item := range d.Items() {
		k, ok1 := starlark.AsString(item[0])
		val, ok2 := starlark.AsString(item[1])
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("%s: %s: entry %s: want string keys and values", fn, arg, item[0])
		}
		out[k] = val
	}
	return out, nil
}

// each calls f for v itself or, when v is a list or tuple, for each element.
func each(v starlark.Value, f func(starlark.Value) error) error {
	switch v := v.(type) {
	case nil, starlark.NoneType:
		return nil
	case *starlark.List, starlark.Tuple:
		it := v.(starlark.Iterable).Iterate()
		defer it.Done()
		var x starlark.Value
		for it.Next(&x) {
			if err := f(x); err != nil {
				return err
			}
		}
		return nil
	}
	return f(v)
}

func links(fn string, v starlark.Value) ([]Link, error) {
	var out []Link
	err := each(v, func(x starlark.Value) error {
		switch x := x.(type) {
		case starlark.String:
			out = append(out, Link{URL: string(x)})
		case value[Link]:
			out = append(out, x.v)
		default:
			return fmt.Errorf("%s: links: got %s, want string or link()", fn, x.Type())
		}
		return nil
	})
	return out, err
}
