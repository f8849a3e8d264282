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
