package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Checks collects what is wrong with a service's Config, every problem at
// once, each naming its field in one form: "<Field> <value>: must <rule>".
// Validate methods write one line a rule instead of an if and an append.
type Checks struct{ errs []error }

// Must records "<field> <value>: must <rule>" unless ok; a string value is
// quoted.
func (c *Checks) Must(ok bool, field string, value any, rule string) {
	if ok {
		return
	}
	if s, isString := value.(string); isString {
		value = strconv.Quote(s)
	}
	c.errs = append(c.errs, &FieldError{Field: field, Value: fmt.Sprint(value), Problem: "must " + rule})
}

// Required records "<field>: required (<why>)" when set is false.
func (c *Checks) Required(set bool, field, why string) {
	if !set {
		c.errs = append(c.errs, &FieldError{Field: field, Problem: "required (" + why + ")"})
	}
}

// Add records a problem in the caller's own words.
func (c *Checks) Add(err error) { c.errs = append(c.errs, err) }

// Err is every problem recorded, joined; nil when there is none.
func (c *Checks) Err() error { return errors.Join(c.errs...) }

// FieldError is one problem Checks found with one field of a Config.
type FieldError struct {
	// Field is the Config field as Validate names it ("Workers",
	// "Limits.PerCluster", "Datastores[1]").
	Field string
	// Value is the field's value as printed (strings quoted; empty for a
	// missing value).
	Value string
	// Problem is what is wrong: "must be at least 1", "required (why)".
	Problem string
	// Setting is the variable that sets the field, when Load knows it.
	// Whoever reads the error set a variable, not a Go field: naming it
	// says what to change.
	Setting string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.Field)
	if e.Value != "" {
		b.WriteString(" " + e.Value)
	}
	if e.Setting != "" {
		b.WriteString(" (" + e.Setting + ")")
	}
	b.WriteString(": " + e.Problem)
	return b.String()
}
