package events

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// ValidationError is the error of every Validate function and of Decode when
// a payload is well-formed JSON but wrong. It keeps each problem as a
// field.Error so callers can report the first offending field (PodRejected
// has a Field for exactly that) while Error names every field and reason.
type ValidationError struct {
	Errors field.ErrorList
}

// Error lists every field with its reason, separated by "; ".
func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap exposes the individual field errors to errors.Is and errors.As.
func (e *ValidationError) Unwrap() []error {
	out := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		out[i] = fe
	}
	return out
}

// Field returns the path of the first offending field (for example
// "pod.spec.containers[1].image"), or "" when there is none.
func (e *ValidationError) Field() string {
	if len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Field
}

// asError turns an error list into nil or a *ValidationError.
func asError(errs field.ErrorList) error {
	if len(errs) == 0 {
		return nil
	}
	return &ValidationError{Errors: errs}
}

// DecodeError is returned when data is not valid JSON for the target type.
// Field is the JSON path of the problem when it is known.
type DecodeError struct {
	Field string
	Err   error
}

func (e *DecodeError) Error() string {
	if e.Field == "" {
		return e.Err.Error()
	}
	return fmt.Sprintf("%s: %v", e.Field, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }
