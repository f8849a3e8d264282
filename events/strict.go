package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
	kjson "sigs.k8s.io/json"
)

// decodeStrict decodes JSON the way the Kubernetes API server does in
// strict mode: field names are case-sensitive, unknown and duplicate fields
// are errors, and integers stay integers. encoding/json with
// DisallowUnknownFields would still accept "Metadata" for "metadata" and let
// the last of two duplicate keys win silently.
//
// A syntax or type error stops decoding and is returned as err (a
// *DecodeError, or a *ValidationError for bad quantities). Unknown and
// duplicate fields do not stop it: they come back as strict, each with its
// field path, so the caller can validate what was decoded and report
// everything at once.
func decodeStrict(data []byte, v any) (strict field.ErrorList, err error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &DecodeError{Err: errors.New("empty data, want a JSON object")}
	}
	strictErrs, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return nil, decodeError(data, err)
	}
	for _, se := range strictErrs {
		path := ""
		var fe kjson.FieldError
		if errors.As(se, &fe) {
			path = fe.FieldPath()
		}
		detail := "unknown field"
		if strings.HasPrefix(se.Error(), "duplicate") {
			detail = "duplicate field"
		}
		strict = append(strict, field.Forbidden(pathOf(path), detail))
	}
	return strict, nil
}

// unmarshalStrict is decodeStrict for callers that want one error: strict
// problems come back as a *ValidationError.
func unmarshalStrict(data []byte, v any) error {
	strict, err := decodeStrict(data, v)
	if err != nil {
		return err
	}
	return asError(strict)
}

// withStrict puts the strict decoding problems in front of a validation
// result.
func withStrict(strict field.ErrorList, validateErr error) error {
	if validateErr == nil {
		return asError(strict)
	}
	var ve *ValidationError
	if errors.As(validateErr, &ve) {
		return asError(append(strict, ve.Errors...))
	}
	if len(strict) > 0 {
		return errors.Join(asError(strict), validateErr)
	}
	return validateErr
}

// decodeError gives a decode failure the best field path it can find.
func decodeError(data []byte, err error) error {
	if ok, off := kjson.SyntaxErrorOffset(err); ok {
		return &DecodeError{Err: fmt.Errorf("invalid JSON at byte %d: %w", off, err)}
	}
	if qerrs := quantityErrors(data); len(qerrs) > 0 {
		return asError(qerrs)
	}
	if m := typeErrorRE.FindStringSubmatch(err.Error()); m != nil {
		got, path, want := m[1], m[2], m[3]
		if full := typeErrorPath(data, err, path); full != "" {
			path = full
		}
		return &DecodeError{Field: path, Err: fmt.Errorf("wrong JSON type: got %s, want %s%s", got, want, typeHint(got, want))}
	}
	return &DecodeError{Err: err}
}

// typeHint says how to fix the usual wrong type in a YAML manifest: a
// string written as an unquoted number or YAML 1.1 boolean.
func typeHint(got, want string) string {
	switch {
	case want != "string":
		return ""
	case got == "bool":
		return "; quote the value (YAML reads unquoted yes, no, on, off, true and false as booleans)"
	case strings.HasPrefix(got, "number"):
		return "; quote the value"
	}
	return ""
}

// typeErrorPath is the full path of the value a type error is about, with
// indices and map keys (spec.containers[1].command,
// metadata.annotations[team]), or "" when it cannot be found. The decoder's
// message names only the struct fields (spec.containers.command); its
// UnmarshalTypeError also has the offset where the value ends (or, for an
// object or array, just after its opening bracket), and walking the JSON to
// that offset finds the value itself. fields, the struct-field path, tells
// struct fields (.name) from map keys ([key]) on the way.
func typeErrorPath(data []byte, err error, fields string) string {
	off, ok := typeErrorOffset(err)
	if !ok {
		return ""
	}
	want := strings.Split(fields, ".")
	type frame struct {
		path    *field.Path
		matched int // elements of want the path has consumed
		array   bool
		index   int
		key     string
		haveKey bool
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		end := dec.InputOffset()
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			continue
		}
		var (
			path    *field.Path
			matched int
		)
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			switch {
			case top.array:
				path, matched = top.path.Index(top.index), top.matched
				top.index++
			case !top.haveKey:
				top.key, top.haveKey = tok.(string), true
				continue
			case top.matched < len(want) && top.key == want[top.matched]:
				path, matched = top.path.Child(top.key), top.matched+1
				top.haveKey = false
			default:
				path, matched = top.path.Key(top.key), top.matched
				top.haveKey = false
			}
		}
		switch {
		case end == off:
			if path == nil || matched != len(want) {
				return ""
			}
			return path.String()
		case end > off:
			return ""
		}
		if d, ok := tok.(json.Delim); ok {
			stack = append(stack, &frame{path: path, matched: matched, array: d == '['})
		}
	}
}

// typeErrorOffset reads the Offset of an UnmarshalTypeError from
// encoding/json or from sigs.k8s.io/json, whose copy of the type is
// internal (so errors.As cannot name it) but has the same exported field.
func typeErrorOffset(err error) (int64, bool) {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return te.Offset, true
	}
	v := reflect.ValueOf(err)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return 0, false
	}
	f := v.Elem().FieldByName("Offset")
	if !f.IsValid() || !f.CanInt() {
		return 0, false
	}
	return f.Int(), true
}

// typeErrorRE picks apart the decoder's type error ("json: cannot unmarshal
// string into Go struct field ContainerPort.pod.spec.containers.ports.containerPort
// of type int32") so the message leads with the field path like all others.
var typeErrorRE = regexp.MustCompile(`cannot unmarshal (\S+) into Go struct field [A-Za-z0-9_]+\.(\S+) of type (\S+)`)

// pathOf wraps an already rendered field path (as sigs.k8s.io/json reports
// it) so it can sit in a field.ErrorList.
func pathOf(rendered string) *field.Path {
	return field.NewPath(rendered)
}
