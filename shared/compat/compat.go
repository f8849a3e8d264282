package compat

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/podvisor/podvisor/events"
)

// APIVersion is the format's version.
const APIVersion = "compat.podvisor.io/v1"

// Kinds of documents.
const (
	KindOffers   = "Offers"
	KindRequires = "Requires"
)

// Providers.
const (
	ProviderInfrastructure = "infrastructure"
	ProviderSDDC           = "sddc"
	ProviderGuestCluster   = "guestcluster"
)

// Present is the version of a capability offered without a version.
const Present = "present"

// Document is an Offers or a Requires document.
type Document struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Provider is who offers (Offers) or who requires (Requires).
	Provider string `json:"provider"`
	// Name and Version of the product the document describes.
	Name    string `json:"name"`
	Version string `json:"version"`
	// Offers maps a capability to its version (or "present").
	Offers map[string]string `json:"offers,omitempty"`
	// Requires lists requirements (Kind Requires).
	Requires []Requirement `json:"requires,omitempty"`
}

// Requirement is one capability a provider must offer.
type Requirement struct {
	Provider string `json:"provider"`
	Name     string `json:"name"`
	// Version constraints ("" = offered at all).
	Version string `json:"version,omitempty"`
}

// Ref names a document: provider@name-version.
func (d Document) Ref() string { return d.Provider + "@" + d.Name + "-" + d.Version }

// Validate checks a document, naming the field.
func (d Document) Validate() error {
	var errs []error
	if d.APIVersion != APIVersion {
		errs = append(errs, fmt.Errorf("apiVersion: %q is not supported, want %s", d.APIVersion, APIVersion))
	}
	if d.Kind != KindOffers && d.Kind != KindRequires {
		errs = append(errs, fmt.Errorf("kind: %q, want %s or %s", d.Kind, KindOffers, KindRequires))
	}
	if !slices.Contains([]string{ProviderInfrastructure, ProviderSDDC, ProviderGuestCluster}, d.Provider) {
		errs = append(errs, fmt.Errorf("provider: %q, want infrastructure, sddc or guestcluster", d.Provider))
	}
	if d.Name == "" {
		errs = append(errs, errors.New("name: required"))
	}
	if d.Kind == KindOffers && len(d.Requires) > 0 {
		errs = append(errs, errors.New("requires: an Offers document offers only"))
	}
	for i, r := range d.Requires {
		if r.Name == "" {
			errs = append(errs, fmt.Errorf("requires[%d].name: required", i))
		}
		if !slices.Contains([]string{ProviderInfrastructure, ProviderSDDC}, r.Provider) {
			errs = append(errs, fmt.Errorf("requires[%d].provider: %q, want infrastructure or sddc", i, r.Provider))
		}
		if _, err := parseConstraints(r.Version); err != nil {
			errs = append(errs, fmt.Errorf("requires[%d].version: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// Decode reads a stream of YAML or JSON documents strictly and validates
// each.
func Decode(r io.Reader) ([]Document, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var out []Document
	for i, part := range strings.Split(string(data), "\n---") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		var d Document
		if err := yaml.UnmarshalStrict([]byte(part), &d); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Result is a check's outcome.
type Result struct {
	Compatible bool
	Unmet      []events.UnmetRequirement
	// Offers are the documents checked against (Ref).
	Offers []string
}

// Message is one line for a person: the verdict and each unmet
// requirement.
func (r Result) Message(what string) string {
	if r.Compatible {
		return what + " is compatible with " + strings.Join(r.Offers, ", ")
	}
	parts := make([]string, len(r.Unmet))
	for i, u := range r.Unmet {
		have := "not offered"
		if u.Have != "" {
			have = "offered " + u.Have
		}
		parts[i] = fmt.Sprintf("%s %s %s (%s)", u.Provider, u.Name, u.Want, have)
	}
	return what + " is incompatible: needs " + strings.Join(parts, "; ")
}

// Check evaluates every requirement of req against the offers of its
// provider.
func Check(req Document, offers ...Document) Result {
	res := Result{Compatible: true}
	byProvider := map[string]map[string]string{}
	for _, o := range offers {
		res.Offers = append(res.Offers, o.Ref())
		m := byProvider[o.Provider]
		if m == nil {
			m = map[string]string{}
			byProvider[o.Provider] = m
		}
		for k, v := range o.Offers {
			m[k] = v
		}
	}
	for _, r := range req.Requires {
		have, ok := byProvider[r.Provider][r.Name]
		want := r.Version
		if want == "" {
			want = Present
		}
		if ok && satisfies(have, r.Version) {
			continue
		}
		res.Compatible = false
		res.Unmet = append(res.Unmet, events.UnmetRequirement{Provider: r.Provider, Name: r.Name, Want: want, Have: have})
	}
	return res
}

type constraint struct {
	op, version string
}

func parseConstraints(s string) ([]constraint, error) {
	var out []constraint
	for _, f := range strings.Fields(s) {
		op := ""
		for _, o := range []string{">=", "<=", "=", ">", "<"} {
			if strings.HasPrefix(f, o) {
				op = o
				break
			}
		}
		if op == "" {
			op, f = "=", "="+f
		}
		v := strings.TrimPrefix(f, op)
		if v == "" {
			return nil, fmt.Errorf("%q: a version must follow %s", s, op)
		}
		out = append(out, constraint{op, v})
	}
	return out, nil
}

func satisfies(have, want string) bool {
	cs, err := parseConstraints(want)
	if err != nil {
		return false
	}
	for _, c := range cs {
		if have == Present {
			return false // a versioned requirement needs a version
		}
		n := compareVersions(have, c.version)
		ok := map[string]bool{"=": n == 0, ">=": n >= 0, "<=": n <= 0, ">": n > 0, "<": n < 0}[c.op]
		if !ok {
			return false
		}
	}
	return true
}

// compareVersions compares dotted versions ("v1.37.2", "8.0.2.0"); a
// missing part is 0; a part that is not a number compares as text.
func compareVersions(a, b string) int {
	pa := strings.FieldsFunc(strings.TrimPrefix(a, "v"), func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	pb := strings.FieldsFunc(strings.TrimPrefix(b, "v"), func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	for i := range max(len(pa), len(pb)) {
		x, y := "0", "0"
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		nx, ex := strconv.Atoi(x)
		ny, ey := strconv.Atoi(y)
		switch {
		case ex == nil && ey == nil && nx != ny:
			if nx < ny {
				return -1
			}
			return 1
		case (ex != nil || ey != nil) && x != y:
			return strings.Compare(x, y)
		}
	}
	return 0
}
