package events

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Small field validators shared by the payloads. Each returns a field.ErrorList
// so that a payload's Validate can report every problem at once.

// tokenRE is what an identifier that ends up in a KV key, a VM name
// (pv-<uid>) or a NATS header may look like: UUIDs, ULIDs and generated
// names all fit, spaces, slashes and wildcards do not.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// reasonRE follows the Kubernetes convention for machine-readable reasons:
// a short CamelCase word such as InsufficientMemory.
var reasonRE = regexp.MustCompile(`^[A-Z][A-Za-z0-9]{0,63}$`)

// digestRE accepts the OCI digests podvisor deals with.
var digestRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)

// datastorePathRE is vSphere's datastore path syntax: "[datastore] dir/file".
var datastorePathRE = regexp.MustCompile(`^\[[^\[\]]+\] \S.*$`)

// validateWith checks a value that must be set and satisfy ok; why says
// what it must be. Most field checks are this shape with their own ok.
func validateWith(p *field.Path, v string, ok func(string) bool, why string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	if !ok(v) {
		return field.ErrorList{field.Invalid(p, v, why)}
	}
	return nil
}

// validateEach checks a value that must be set against a Kubernetes
// validation that returns one message per problem.
func validateEach(p *field.Path, v string, problems func(string) []string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	var errs field.ErrorList
	for _, msg := range problems(v) {
		errs = append(errs, field.Invalid(p, v, msg))
	}
	return errs
}

func required(p *field.Path, v string) field.ErrorList {
	if strings.TrimSpace(v) == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	return nil
}

func validateToken(p *field.Path, v string, mandatory bool) field.ErrorList {
	if v == "" && !mandatory {
		return nil
	}
	return validateWith(p, v, tokenRE.MatchString, "must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")
}

func validateDNSLabel(p *field.Path, v string) field.ErrorList {
	return validateEach(p, v, validation.IsDNS1123Label)
}

func validateDNSSubdomain(p *field.Path, v string) field.ErrorList {
	return validateEach(p, v, validation.IsDNS1123Subdomain)
}

func validateReason(p *field.Path, v string) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "a CamelCase reason such as InsufficientMemory")}
	}
	if !reasonRE.MatchString(v) {
		return field.ErrorList{field.Invalid(p, v, "must be a CamelCase word such as InsufficientMemory")}
	}
	return nil
}

// validateHostName accepts what vCenter uses as a host's name: an FQDN, an IP
// address, or the simulator's DC0_C0_H0 style. Only emptiness, length and
// characters that would break subjects, keys or logs are refused.
func validateHostName(p *field.Path, v string) field.ErrorList {
	return validateBounded(p, v, 255, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == '*' || r == '>' || r == '/'
	}, "must not contain spaces, control characters, '*', '>' or '/'")
}

// validateBounded checks a name that must be set, at most max bytes long
// and free of the runes bad refuses; why names them.
func validateBounded(p *field.Path, v string, max int, bad func(rune) bool, why string) field.ErrorList {
	if len(v) > max {
		return field.ErrorList{field.TooLong(p, v, max)}
	}
	return validateWith(p, v, func(v string) bool { return !strings.ContainsFunc(v, bad) }, why)
}

// validateObjectName accepts a vSphere inventory name (cluster, resource
// pool, datastore, port group): non-empty, at most 80 characters (vCenter's
// limit for most entity names) and free of control characters.
func validateObjectName(p *field.Path, v string) field.ErrorList {
	return validateBounded(p, v, 80, unicode.IsControl, "must not contain control characters")
}

func validateNames(p *field.Path, names []string, each func(*field.Path, string) field.ErrorList) field.ErrorList {
	var errs field.ErrorList
	seen := make(map[string]bool, len(names))
	for i, n := range names {
		errs = append(errs, each(p.Index(i), n)...)
		if seen[n] {
			errs = append(errs, field.Duplicate(p.Index(i), n))
		}
		seen[n] = true
	}
	return errs
}

func validateDigest(p *field.Path, v string) field.ErrorList {
	return validateWith(p, v, digestRE.MatchString, "must be an OCI digest such as sha256:<64 hex digits>")
}

func validateDatastorePath(p *field.Path, v string) field.ErrorList {
	return validateWith(p, v, datastorePathRE.MatchString, `must be a datastore path such as "[datastore1] podvisor-images/abc/disk.vmdk"`)
}

func validateIPv4(p *field.Path, v string, mandatory bool) field.ErrorList {
	if v == "" && !mandatory {
		return nil
	}
	return validateWith(p, v, func(v string) bool {
		a, err := netip.ParseAddr(v)
		return err == nil && a.Is4()
	}, "must be an IPv4 address")
}

func validateMAC(p *field.Path, v string) field.ErrorList {
	return validateWith(p, v, func(v string) bool {
		hw, err := net.ParseMAC(v)
		return err == nil && len(hw) == 6
	}, "must be a 48-bit MAC address such as 00:50:56:aa:bb:cc")
}

func validateNonNegative(p *field.Path, v int64) field.ErrorList {
	if v < 0 {
		return field.ErrorList{field.Invalid(p, v, "must not be negative")}
	}
	return nil
}

func validatePositive(p *field.Path, v int64) field.ErrorList {
	if v <= 0 {
		return field.ErrorList{field.Invalid(p, v, "must be greater than zero")}
	}
	return nil
}

// validatePodRef checks the namespace/name/uid triple every pod event carries.
// Namespace is required here: producers normalize pods before publishing.
func validatePodRef(namespace, name, uid string, uidRequired bool) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateDNSLabel(field.NewPath("namespace"), namespace)...)
	errs = append(errs, validateDNSSubdomain(field.NewPath("name"), name)...)
	errs = append(errs, validateToken(field.NewPath("uid"), uid, uidRequired)...)
	return errs
}

// PodKey is the key of a pod everywhere in podvisor: KV records, work queues
// and the CloudEvent subject attribute. An empty namespace means "default".
func PodKey(namespace, name string) string {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return namespace + "/" + name
}

// SplitPodKey is the inverse of PodKey.
func SplitPodKey(key string) (namespace, name string, err error) {
	ns, n, ok := strings.Cut(key, "/")
	if !ok || ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("pod key %q: want <namespace>/<name>", key)
	}
	return ns, n, nil
}

// sortedKeys makes map iteration deterministic so error lists come out in the
// same order on every run.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validateImageDiskPath accepts only a disk of the image cache's own folder
// ("[ds] podvisor-images/<chain>/disk.vmdk"): a fact naming any other file
// would make it a pod's read-only layer, whatever it holds.
func validateImageDiskPath(p *field.Path, v string) field.ErrorList {
	if errs := validateDatastorePath(p, v); len(errs) > 0 {
		return errs
	}
	_, rel, _ := strings.Cut(v, "] ")
	if !strings.HasPrefix(rel, ImageRoot+"/") || !strings.HasSuffix(rel, ".vmdk") || slices.Contains(strings.Split(rel, "/"), "..") {
		return field.ErrorList{field.Invalid(p, v, "must be a .vmdk below "+ImageRoot+"/ on its datastore")}
	}
	return nil
}

// validatePortGroupName accepts only the port groups podvisor makes for its
// networks (PortGroupName): a fact naming another (management, vMotion)
// would connect a pod to it.
func validatePortGroupName(p *field.Path, v string) field.ErrorList {
	if errs := validateObjectName(p, v); len(errs) > 0 {
		return errs
	}
	if !strings.HasPrefix(v, PortGroupName("")) || len(validateDNSLabel(p, strings.TrimPrefix(v, PortGroupName("")))) > 0 {
		return field.ErrorList{field.Invalid(p, v, `must be a podvisor port group, "pv-<network>"`)}
	}
	return nil
}

// validateOptionalHost checks a host name that may be empty.
func validateOptionalHost(p *field.Path, host string) field.ErrorList {
	if host == "" {
		return nil
	}
	return validateHostName(p, host)
}

// validateFailure checks what every failure carries: a CamelCase reason
// and a message for a person.
func validateFailure(reason, message string) field.ErrorList {
	errs := validateReason(field.NewPath("reason"), reason)
	return append(errs, required(field.NewPath("message"), message)...)
}

// validateHostMove checks the hosts of a move: sourceHost, then targetHost.
func validateHostMove(source, target string) field.ErrorList {
	errs := validateHostName(field.NewPath("sourceHost"), source)
	return append(errs, validateHostName(field.NewPath("targetHost"), target)...)
}

// validateAttachments checks the attachments of a pod or VM: at least one,
// each valid, no network twice.
func validateAttachments(atts []NetworkAttachment) field.ErrorList {
	var errs field.ErrorList
	if len(atts) == 0 {
		errs = append(errs, field.Required(field.NewPath("attachments"), ""))
	}
	seen := map[string]bool{}
	for i := range atts {
		p := field.NewPath("attachments").Index(i)
		errs = append(errs, atts[i].validate(p)...)
		if seen[atts[i].Network] {
			errs = append(errs, field.Duplicate(p.Child("network"), atts[i].Network))
		}
		seen[atts[i].Network] = true
	}
	return errs
}
