package events

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
	kjson "sigs.k8s.io/json"
)

// unmarshalStrict decodes JSON the way the Kubernetes API server does in
// strict mode: field names are case-sensitive, unknown and duplicate fields
// are errors, and integers stay integers. encoding/json with
// DisallowUnknownFields would still accept "Metadata" for "metadata" and let
// the last of two duplicate keys win silently.
//
// Every strict problem is reported (not only the first) with its field path,
// as a *ValidationError; a syntax or type error is a *DecodeError.
func unmarshalStrict(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return &DecodeError{Err: errors.New("empty data, want a JSON object")}
	}
	strictErrs, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return decodeError(data, err)
	}
	if len(strictErrs) == 0 {
		return nil
	}
	var list field.ErrorList
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
		list = append(list, field.Forbidden(pathOf(path), detail))
	}
	return asError(list)
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
		return &DecodeError{Field: m[2], Err: fmt.Errorf("wrong JSON type: got %s, want %s", m[1], m[3])}
	}
	return &DecodeError{Err: err}
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
