package events

import (
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Compatibility checks of guest clusters (part of the guestcluster.*
// domain, stream GUESTCLUSTERS). The requires/offers documents themselves
// and the check live in shared/compat; these are the events around them.

// GuestClusterCheckRequested asks the guest cluster controller to check a
// guest cluster against the infrastructure and the vCenter now (`podvisor
// check guestcluster NAME`); the answer is a guestcluster.compatibility.
type GuestClusterCheckRequested struct {
	// ID correlates the answer (its CheckID).
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Validate checks the reference.
func (e *GuestClusterCheckRequested) Validate() error {
	errs := validateToken(field.NewPath("id"), e.ID, true)
	errs = append(errs, validateDNSLabel(field.NewPath("namespace"), e.Namespace)...)
	errs = append(errs, validateDNSLabel(field.NewPath("name"), e.Name)...)
	return asError(errs)
}

// ObjectKey is the guest cluster key <namespace>/<name>.
func (e *GuestClusterCheckRequested) ObjectKey() string { return PodKey(e.Namespace, e.Name) }

// UnmetRequirement is one requirement of a guest cluster version that the
// offers do not satisfy.
type UnmetRequirement struct {
	// Provider is who should offer it: infrastructure or sddc.
	Provider string `json:"provider"`
	// Name of the capability (an API feature, a service, vcenter.version).
	Name string `json:"name"`
	// Want is the requirement as written (">=8.0.2", "present").
	Want string `json:"want"`
	// Have is what is offered ("" when it is not offered at all).
	Have string `json:"have,omitempty"`
}

// GuestClusterCompatibility is the result of a compatibility check, on
// create, upgrade or request. The same result is posted as a vCenter event
// on the guest cluster's compute cluster.
type GuestClusterCompatibility struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Version is the guest cluster version checked.
	Version string `json:"version"`
	// CheckID is the request's id (on request) or derived from the cause.
	CheckID string `json:"checkId,omitempty"`
	// Trigger is Create, Upgrade or Request.
	Trigger string `json:"trigger"`
	// Compatible is true when every requirement is met.
	Compatible bool `json:"compatible"`
	// Unmet lists every requirement not met (empty when compatible).
	Unmet []UnmetRequirement `json:"unmet,omitempty"`
	// Message is one line for a person.
	Message string `json:"message"`
	// Offers names the offer documents checked against (provider@version).
	Offers []string `json:"offers,omitempty"`
	// VCenterEventKey is the key of the event posted to vCenter (0 when
	// posting failed: Message says so).
	VCenterEventKey int32 `json:"vcenterEventKey,omitempty"`
}

// Compatibility check triggers.
const (
	CompatTriggerCreate  = "Create"
	CompatTriggerUpgrade = "Upgrade"
	CompatTriggerRequest = "Request"
)

// Validate checks the fields and that the verdict agrees with Unmet.
func (e *GuestClusterCompatibility) Validate() error {
	errs := validateDNSLabel(field.NewPath("namespace"), e.Namespace)
	errs = append(errs, validateDNSLabel(field.NewPath("name"), e.Name)...)
	errs = append(errs, required(field.NewPath("version"), e.Version)...)
	errs = append(errs, validateToken(field.NewPath("checkId"), e.CheckID, false)...)
	switch e.Trigger {
	case CompatTriggerCreate, CompatTriggerUpgrade, CompatTriggerRequest:
	default:
		errs = append(errs, field.NotSupported(field.NewPath("trigger"), e.Trigger,
			[]string{CompatTriggerCreate, CompatTriggerUpgrade, CompatTriggerRequest}))
	}
	if e.Compatible && len(e.Unmet) > 0 {
		errs = append(errs, field.Invalid(field.NewPath("compatible"), e.Compatible, "must be false when requirements are unmet"))
	}
	if !e.Compatible && len(e.Unmet) == 0 {
		errs = append(errs, field.Required(field.NewPath("unmet"), "an incompatible result names each unmet requirement"))
	}
	for i, u := range e.Unmet {
		p := field.NewPath("unmet").Index(i)
		errs = append(errs, required(p.Child("provider"), u.Provider)...)
		errs = append(errs, required(p.Child("name"), u.Name)...)
		errs = append(errs, required(p.Child("want"), u.Want)...)
	}
	errs = append(errs, required(field.NewPath("message"), e.Message)...)
	return asError(errs)
}

// ObjectKey is the guest cluster key <namespace>/<name>.
func (e *GuestClusterCompatibility) ObjectKey() string { return PodKey(e.Namespace, e.Name) }
