package config

import (
	"errors"
	"fmt"
	"strconv"
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
	c.errs = append(c.errs, fmt.Errorf("%s %v: must %s", field, value, rule))
}

// Required records "<field>: required (<why>)" when set is false.
func (c *Checks) Required(set bool, field, why string) {
	if !set {
		c.errs = append(c.errs, fmt.Errorf("%s: required (%s)", field, why))
	}
}

// Add records a problem in the caller's own words.
func (c *Checks) Add(err error) { c.errs = append(c.errs, err) }

// Err is every problem recorded, joined; nil when there is none.
func (c *Checks) Err() error { return errors.Join(c.errs...) }
