package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/podvisor/podvisor/shared/bytesize"
)

// Source looks a setting up by name.
type Source func(name string) (string, bool)

// Env is the process environment.
func Env() Source { return os.LookupEnv }

// Map serves the settings of m (nil: none).
func Map(m map[string]string) Source {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// Layered looks a setting up in each source in turn; the first that has it
// wins. Nil sources are skipped.
func Layered(srcs ...Source) Source {
	return func(name string) (string, bool) {
		for _, s := range srcs {
			if s == nil {
				continue
			}
			if v, ok := s(name); ok {
				return v, true
			}
		}
		return "", false
	}
}

// Reader reads settings from a Source into typed fields and collects
// every problem.
type Reader struct {
	src  Source
	errs []error
	// settingAt maps the address of each field a typed read declared to
	// the setting's name, so Load can name the setting when Validate
	// refuses the field.
	settingAt map[uintptr]string
}

// declare remembers that name sets the field at dst.
func (r *Reader) declare(name string, dst any) {
	if r.settingAt == nil {
		r.settingAt = map[uintptr]string{}
	}
	r.settingAt[reflect.ValueOf(dst).Pointer()] = name
}

// Read returns a Reader of src (nil: the environment).
func Read(src Source) *Reader {
	if src == nil {
		src = Env()
	}
	return &Reader{src: src}
}

// Lookup returns the trimmed value of name and whether it is set and not
// empty.
func (r *Reader) Lookup(name string) (string, bool) {
	v, ok := r.src(name)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

// Fail records a problem with name's value (for settings a caller parses
// itself).
func (r *Reader) Fail(name, value, want string) {
	r.errs = append(r.errs, fmt.Errorf("%s=%q: want %s", name, value, want))
}

// Failf records a problem a caller found, such as an unreadable file the
// setting names.
func (r *Reader) Failf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
}

// String sets *dst to name's value when it is set.
func (r *Reader) String(name string, dst *string) {
	r.declare(name, dst)
	if v, ok := r.Lookup(name); ok {
		*dst = v
	}
}

// StringOrNone sets *dst to name's value, trimmed, whenever it is set,
// empty included: for a setting where "set but empty" means none rather
// than the default (a default folder the user empties on purpose).
func (r *Reader) StringOrNone(name string, dst *string) {
	r.declare(name, dst)
	if v, ok := r.src(name); ok {
		*dst = strings.TrimSpace(v)
	}
}

// Int sets *dst to name's value, a whole number.
func (r *Reader) Int(name string, dst *int) {
	parsed(r, name, dst, "a whole number", strconv.Atoi)
}

// Int64 sets *dst to name's value, a whole number.
func (r *Reader) Int64(name string, dst *int64) {
	parsed(r, name, dst, "a whole number", func(v string) (int64, error) { return strconv.ParseInt(v, 10, 64) })
}

// Float sets *dst to name's value, a number.
func (r *Reader) Float(name string, dst *float64) {
	parsed(r, name, dst, "a number", func(v string) (float64, error) { return strconv.ParseFloat(v, 64) })
}

// Duration sets *dst to name's value, a Go duration such as 30s or 2m.
func (r *Reader) Duration(name string, dst *time.Duration) {
	parsed(r, name, dst, "a duration such as 30s", time.ParseDuration)
}

// Bool sets *dst to name's value: 1, t, true, 0, f, false (any case).
func (r *Reader) Bool(name string, dst *bool) {
	parsed(r, name, dst, "true or false", strconv.ParseBool)
}

// parsed sets *dst to name's value as parse reads it, when it is set. A
// value parse refuses leaves *dst alone and is recorded as wanting want
// (not parse's error: the setting's name, its value and what it should
// look like say more to whoever set it).
func parsed[T any](r *Reader, name string, dst *T, want string, parse func(string) (T, error)) {
	r.declare(name, dst)
	if v, ok := r.Lookup(name); ok {
		x, err := parse(v)
		if err != nil {
			r.Fail(name, v, want)
			return
		}
		*dst = x
	}
}

// Parse hands name's value, when it is set, to parse, which stores it
// where it belongs; an error it returns is recorded as "<name>: <error>".
// It is for settings of a kind of a service's own (a size, a file to read).
func (r *Reader) Parse(name string, parse func(value string) error) {
	if v, ok := r.Lookup(name); ok {
		if err := parse(v); err != nil {
			r.Failf("%s: %w", name, err)
		}
	}
}

// Bytes sets *dst to name's value, a size in bytes or with a binary
// suffix such as 20Gi (bytesize.Parse).
func (r *Reader) Bytes(name string, dst *int64) {
	r.declare(name, dst)
	r.Parse(name, func(v string) error {
		n, err := bytesize.Parse(v)
		if err == nil {
			*dst = n
		}
		return err
	})
}

// List sets *dst to name's comma-separated values, trimmed, empty ones
// dropped.
func (r *Reader) List(name string, dst *[]string) {
	r.declare(name, dst)
	if v, ok := r.Lookup(name); ok {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		*dst = out
	}
}

// Err is every problem found so far, joined; nil when there is none.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// Load is a service's ConfigFrom in one call: it starts from defaults,
// lets read declare each setting on a Reader (the one place a service
// names its settings), and validates the result. Every bad value is
// reported at once, and Validate runs only when every value was read.
// A field Validate refuses is named with the setting read into it
// ("Workers 0 (PODVISOR_SCHEDULER_WORKERS): must be at least 1").
func Load[C interface{ Validate() error }](src Source, defaults C, read func(r *Reader, c *C)) (C, error) {
	c := defaults
	r := Read(src)
	read(r, &c)
	if err := r.Err(); err != nil {
		return c, err
	}
	err := c.Validate()
	if err != nil && len(r.settingAt) > 0 {
		err = nameSettings(err, settingsByField(reflect.ValueOf(&c).Elem(), "", r.settingAt))
	}
	return c, err
}

// settingsByField maps the path of each field of the struct v ("Workers",
// "Limits.PerCluster") whose address a read declared to that setting.
func settingsByField(v reflect.Value, prefix string, at map[uintptr]string) map[string]string {
	out := map[string]string{}
	if v.Kind() != reflect.Struct {
		return out
	}
	for i := range v.NumField() {
		f, sf := v.Field(i), v.Type().Field(i)
		if !sf.IsExported() {
			continue
		}
		path := prefix + sf.Name
		if f.Kind() != reflect.Struct {
			if name, ok := at[f.Addr().Pointer()]; ok {
				out[path] = name
			}
			continue
		}
		// A struct shares its address with its first field: only its
		// fields are matched.
		{
			for p, name := range settingsByField(f, path+".", at) {
				out[p] = name
			}
		}
	}
	return out
}

// nameSettings returns err with each FieldError in its tree naming its
// setting, however Validate joined or wrapped them. The FieldErrors are
// Validate's own, made for this call, so they are filled in where they
// stand; the message is rewritten as well, since a wrapper such as
// fmt.Errorf's keeps the text of what it wrapped as it was. An element
// of a list ("Datastores[1]") is set by the list's setting.
func nameSettings(err error, byField map[string]string) error {
	msg := err.Error()
	named := false
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case *FieldError:
			field, _, _ := strings.Cut(e.Field, "[")
			if name, ok := byField[field]; ok && e.Setting == "" {
				plain := e.Error()
				e.Setting = name
				msg = strings.ReplaceAll(msg, plain, e.Error())
				named = true
			}
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	walk(err)
	if !named {
		return err
	}
	return &namedError{msg: msg, err: err}
}

// namedError is a Validate error with its settings named.
type namedError struct {
	msg string
	err error
}

func (e *namedError) Error() string { return e.msg }
func (e *namedError) Unwrap() error { return e.err }
