package events

import (
	"encoding/json"
	"fmt"
	"path"
	"reflect"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// DefaultNamespace is the namespace of a pod whose manifest names none.
const DefaultNamespace = "default"

// Annotations podvisor reads from pod manifests. Every other annotation
// under the podvisor.io/ prefix is an error, so a misspelt one is noticed.
const (
	// AnnotationPrefix is reserved for podvisor.
	AnnotationPrefix = "podvisor.io/"
	// AnnotationNetworks lists the logical networks of a pod, comma
	// separated, in NIC order: "podvisor.io/networks: frontend, backend".
	AnnotationNetworks = AnnotationPrefix + "networks"
	// AnnotationEphemeralEncryption, with the value "required", asks for
	// an encrypted ephemeral disk: the pod VM starts without the key and
	// its containers start only once the provisioner has sent the key to
	// the VM it created (secure instantiation).
	AnnotationEphemeralEncryption = AnnotationPrefix + "ephemeral-encryption"
	// AnnotationInstantClone, with the value "false", has the pod's VM
	// created even where the provisioner forks pod VMs from warm
	// templates (to compare the two, or for a pod that must boot alone).
	AnnotationInstantClone = AnnotationPrefix + "instant-clone"
)

// EphemeralEncryptionRequired is the one value
// AnnotationEphemeralEncryption takes.
const EphemeralEncryptionRequired = "required"

// PodEphemeralEncryption says whether the pod asks for an encrypted
// ephemeral disk.
func PodEphemeralEncryption(pod *corev1.Pod) bool {
	return pod.Annotations[AnnotationEphemeralEncryption] == EphemeralEncryptionRequired
}

// DefaultNetwork is the network of a pod without the networks annotation.
const DefaultNetwork = "default"

// MaxPodNetworks is the NIC limit of a vSphere VM.
const MaxPodNetworks = 10

// knownAnnotations are the podvisor.io/ annotations pods may carry.
var knownAnnotations = []string{AnnotationNetworks, AnnotationEphemeralEncryption, AnnotationInstantClone}

// ValidatePod checks that a Kubernetes v1 Pod is something podvisor can run
// as a pod VM. Every problem is reported, each with its field path rooted at
// "pod" (as in a PodRequested payload), for example
//
//	pod.spec.containers[1].resources.requests.memory: Invalid value: "16Gi": must be less than or equal to limit 8Gi
//
// Fields podvisor does not implement are refused rather than ignored: a pod
// that asked for a volume or host networking and silently got none would be
// worse than one that is rejected with the reason.
func ValidatePod(pod *corev1.Pod) error {
	return asError(validatePod(pod, field.NewPath("pod")))
}

// NormalizePod fills the defaults podvisor relies on and drops what a client
// must not decide, so that two requests for the same pod compare equal: the
// namespace defaults to "default", apiVersion/kind are set, server-side
// metadata (resourceVersion, timestamps, managed fields) and status cleared.
func NormalizePod(pod *corev1.Pod) {
	if pod.Namespace == "" {
		pod.Namespace = DefaultNamespace
	}
	pod.APIVersion, pod.Kind = "v1", KindPod
	pod.ResourceVersion = ""
	pod.SelfLink = ""
	pod.Generation = 0
	pod.CreationTimestamp.Reset()
	pod.DeletionTimestamp = nil
	pod.DeletionGracePeriodSeconds = nil
	pod.ManagedFields = nil
	pod.Status = corev1.PodStatus{}
}

// PodNetworks returns the networks of a pod in NIC order: the entries of the
// podvisor.io/networks annotation, trimmed, or DefaultNetwork when the
// annotation is absent or blank. Duplicates and empty entries are skipped
// here; ValidatePod reports them as errors.
func PodNetworks(pod *corev1.Pod) []string {
	raw, ok := pod.Annotations[AnnotationNetworks]
	if !ok || strings.TrimSpace(raw) == "" {
		return []string{DefaultNetwork}
	}
	var out []string
	seen := map[string]bool{}
	for _, n := range trimSplit(raw) {
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}

// PodContainers returns every container of a pod that needs an image: the
// init containers, then the containers. This is the order of
// PodAccepted.Images and of PodRecord.Images.
func PodContainers(pod *corev1.Pod) []corev1.Container {
	out := make([]corev1.Container, 0, len(pod.Spec.InitContainers)+len(pod.Spec.Containers))
	out = append(out, pod.Spec.InitContainers...)
	return append(out, pod.Spec.Containers...)
}

// PodImages returns the images of PodContainers, in that order.
func PodImages(pod *corev1.Pod) []string {
	cs := PodContainers(pod)
	out := make([]string, len(cs))
	for i := range cs {
		out[i] = cs[i].Image
	}
	return out
}

func validatePod(pod *corev1.Pod, p *field.Path) field.ErrorList {
	if pod == nil {
		return field.ErrorList{field.Required(p, "a v1 Pod")}
	}
	var errs field.ErrorList
	errs = append(errs, validateTypeMeta(p, pod.APIVersion, pod.Kind, "v1", KindPod)...)
	errs = append(errs, validatePodMeta(pod, p.Child("metadata"))...)
	errs = append(errs, validatePodSpec(&pod.Spec, p.Child("spec"))...)
	return errs
}

func validatePodMeta(pod *corev1.Pod, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if pod.Name == "" && pod.GenerateName != "" {
		errs = append(errs, field.Required(p.Child("name"), "podvisor does not generate names (generateName is not supported); set metadata.name"))
	} else {
		errs = append(errs, validateDNSSubdomain(p.Child("name"), pod.Name)...)
	}
	if pod.GenerateName != "" && pod.Name != "" {
		errs = append(errs, field.Forbidden(p.Child("generateName"), "podvisor does not generate names; remove generateName"))
	}
	if pod.Namespace != "" {
		errs = append(errs, validateDNSLabel(p.Child("namespace"), pod.Namespace)...)
	}
	if pod.Namespace == TemplateNamespace {
		errs = append(errs, field.Forbidden(p.Child("namespace"), TemplateNamespace+" is reserved for the provisioner's pod VM templates; use another namespace"))
	}
	if len(pod.Finalizers) > 0 {
		errs = append(errs, field.Forbidden(p.Child("finalizers"), "not supported by podvisor: a pod is deleted as soon as its VM is gone"))
	}
	if len(pod.OwnerReferences) > 0 {
		errs = append(errs, field.Forbidden(p.Child("ownerReferences"), "not supported by podvisor: there is no owner garbage collection"))
	}
	errs = append(errs, validateLabels(p.Child("labels"), pod.Labels)...)
	errs = append(errs, validateAnnotations(p.Child("annotations"), pod.Annotations)...)
	return errs
}

func validateAnnotations(p *field.Path, annotations map[string]string) field.ErrorList {
	var errs field.ErrorList
	for _, k := range sortedKeys(annotations) {
		for _, msg := range validation.IsQualifiedName(strings.ToLower(k)) {
			errs = append(errs, field.Invalid(p, k, msg))
		}
		if !strings.HasPrefix(k, AnnotationPrefix) {
			continue
		}
		switch k {
		case AnnotationNetworks:
			errs = append(errs, validateNetworksAnnotation(p.Key(k), annotations[k])...)
		case AnnotationEphemeralEncryption:
			if annotations[k] != EphemeralEncryptionRequired {
				errs = append(errs, field.NotSupported(p.Key(k), annotations[k], []string{EphemeralEncryptionRequired}))
			}
		case AnnotationInstantClone:
			if annotations[k] != "true" && annotations[k] != "false" {
				errs = append(errs, field.NotSupported(p.Key(k), annotations[k], []string{"true", "false"}))
			}
		default:
			errs = append(errs, field.Invalid(p.Key(k), annotations[k], "unknown podvisor annotation; supported: "+strings.Join(knownAnnotations, ", ")))
		}
	}
	return errs
}

func validateNetworksAnnotation(p *field.Path, raw string) field.ErrorList {
	if strings.TrimSpace(raw) == "" {
		return field.ErrorList{field.Invalid(p, raw, "must list at least one network, for example \"frontend,backend\" (omit the annotation for the default network)")}
	}
	var errs field.ErrorList
	parts := trimSplit(raw)
	if len(parts) > MaxPodNetworks {
		errs = append(errs, field.TooMany(p, len(parts), MaxPodNetworks))
	}
	seen := map[string]bool{}
	for i, n := range parts {
		ip := p.Index(i)
		if n == "" {
			errs = append(errs, field.Invalid(ip, raw, "empty network name in the comma-separated list"))
			continue
		}
		for _, msg := range validation.IsDNS1123Label(n) {
			errs = append(errs, field.Invalid(ip, n, msg))
		}
		if seen[n] {
			errs = append(errs, field.Duplicate(ip, n))
		}
		seen[n] = true
	}
	return errs
}

// Fields podvisor implements; every other field of PodSpec, Container and
// SecurityContext must be left unset. This is an allow-list on purpose: a
// field added by a newer k8s.io/api is refused until someone decides what a
// pod VM does with it.
var (
	supportedPodSpecFields = fieldSet("containers", "initContainers", "volumes", "restartPolicy", "terminationGracePeriodSeconds",
		"dnsPolicy", "nodeSelector", "serviceAccountName", "serviceAccount", "automountServiceAccountToken",
		"enableServiceLinks", "schedulerName", "os", "affinity")
	supportedContainerFields = fieldSet("name", "image", "command", "args", "workingDir", "ports", "env",
		"resources", "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext",
		"volumeMounts", "livenessProbe", "readinessProbe", "startupProbe")
	// Init containers run to completion before the others start: probes
	// have nothing to watch there (Kubernetes refuses them too).
	supportedInitContainerFields = fieldSet("name", "image", "command", "args", "workingDir", "ports", "env",
		"resources", "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext",
		"volumeMounts")
	supportedVolumeSources     = fieldSet("emptyDir")
	supportedVolumeMountFields = fieldSet("name", "mountPath", "readOnly")
	supportedProbeFields       = fieldSet("exec", "httpGet", "tcpSocket", "initialDelaySeconds", "timeoutSeconds",
		"periodSeconds", "successThreshold", "failureThreshold")
	supportedHTTPGetFields         = fieldSet("path", "port", "host", "scheme")
	supportedSecurityContextFields = fieldSet("privileged", "allowPrivilegeEscalation", "runAsUser",
		"runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem")
)

// unsupportedWhy explains the refusals people are most likely to hit.
var unsupportedWhy = map[string]string{
	"volumeDevices":                 "pod VMs have no block volumes; use an emptyDir volume",
	"subPath":                       "volumes are mounted whole in pod VMs",
	"subPathExpr":                   "volumes are mounted whole in pod VMs",
	"mountPropagation":              "mounts in pod VMs are private",
	"recursiveReadOnly":             "mounts in pod VMs are private; readOnly applies to the mount",
	"grpc":                          "the pod VM agent runs exec, httpGet and tcpSocket probes",
	"httpHeaders":                   "httpGet probes send no custom headers in pod VMs",
	"terminationGracePeriodSeconds": "the pod's terminationGracePeriodSeconds applies",
	"restartPolicy":                 "the pod's restartPolicy applies to every container (no sidecar containers)",
	"ephemeralContainers":           "pod VMs cannot attach debug containers",
	"hostNetwork":                   "a pod VM has its own network stack; the hypervisor host's cannot be shared",
	"hostPID":                       "a pod VM has its own kernel; the host's process namespace cannot be shared",
	"hostIPC":                       "a pod VM has its own kernel; the host's IPC namespace cannot be shared",
	"hostUsers":                     "a pod VM has its own kernel; the host's user namespace cannot be shared",
	"nodeName":                      "the scheduler picks the host; use nodeSelector with host labels, or a Migration with targetHost",
	"tolerations":                   "hosts carry no taints; cordoned hosts are skipped by the scheduler",
	"imagePullSecrets":              "registry credentials are configured on the image cache, not per pod",
	"overhead":                      "podvisor computes the pod VM overhead itself",
	"resources":                     "pod-level resources are not supported; set them per container",
	"securityContext":               "pod-level securityContext is not supported; set it per container",
	"livenessProbe":                 "init containers run to completion; probes apply to containers",
	"readinessProbe":                "init containers run to completion; probes apply to containers",
	"startupProbe":                  "init containers run to completion; probes apply to containers",
	"lifecycle":                     "lifecycle hooks are not run in pod VMs",
	"envFrom":                       "ConfigMaps and Secrets do not exist in podvisor; use env with value",
	"stdin":                         "containers in pod VMs cannot be attached to",
	"stdinOnce":                     "containers in pod VMs cannot be attached to",
	"tty":                           "containers in pod VMs cannot be attached to",
}

func fieldSet(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// jsonName is the JSON name of a struct field, "" for inline or ignored ones.
func jsonName(f reflect.StructField) string {
	tag := f.Tag.Get("json")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		if f.Anonymous {
			return ""
		}
		return f.Name
	}
	return name
}

// forbidUnsupported reports every set field of struct v that is not in
// supported. Empty slices and maps count as unset, like omitempty.
func forbidUnsupported(p *field.Path, v any, supported map[string]bool) field.ErrorList {
	rv := reflect.Indirect(reflect.ValueOf(v))
	rt := rv.Type()
	var errs field.ErrorList
	for i := 0; i < rt.NumField(); i++ {
		name := jsonName(rt.Field(i))
		if name == "" || supported[name] {
			continue
		}
		fv := rv.Field(i)
		if fv.IsZero() || ((fv.Kind() == reflect.Slice || fv.Kind() == reflect.Map) && fv.Len() == 0) {
			continue
		}
		why := unsupportedWhy[name]
		if why == "" {
			why = "not implemented for pod VMs"
		}
		errs = append(errs, field.Forbidden(p.Child(name), "not supported by podvisor: "+why))
	}
	return errs
}

func validatePodSpec(spec *corev1.PodSpec, p *field.Path) field.ErrorList {
	errs := forbidUnsupported(p, spec, supportedPodSpecFields)

	switch spec.RestartPolicy {
	case "", corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		errs = append(errs, field.NotSupported(p.Child("restartPolicy"), spec.RestartPolicy,
			[]corev1.RestartPolicy{corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever}))
	}
	if g := spec.TerminationGracePeriodSeconds; g != nil && *g < 0 {
		errs = append(errs, field.Invalid(p.Child("terminationGracePeriodSeconds"), *g, "must not be negative"))
	}
	// podvisor has no cluster DNS: both policies mean "use the resolver the
	// pod's network provides", which is what Kubernetes manifests written for
	// a default cluster expect to work.
	switch spec.DNSPolicy {
	case "", corev1.DNSClusterFirst, corev1.DNSDefault:
	default:
		errs = append(errs, field.NotSupported(p.Child("dnsPolicy"), spec.DNSPolicy, []corev1.DNSPolicy{corev1.DNSClusterFirst, corev1.DNSDefault}))
	}
	errs = append(errs, validateLabels(p.Child("nodeSelector"), spec.NodeSelector)...)
	errs = append(errs, validateAffinity(spec.Affinity, p.Child("affinity"))...)
	// kubectl writes the "default" service account into manifests it
	// exports; podvisor has no service accounts, so only that one is accepted.
	for _, sa := range []struct{ name, v string }{{"serviceAccountName", spec.ServiceAccountName}, {"serviceAccount", spec.DeprecatedServiceAccount}} {
		if sa.v != "" && sa.v != "default" {
			errs = append(errs, field.Forbidden(p.Child(sa.name), "not supported by podvisor: there are no service accounts (only \"default\" is accepted)"))
		}
	}
	if a := spec.AutomountServiceAccountToken; a != nil && *a {
		errs = append(errs, field.Forbidden(p.Child("automountServiceAccountToken"), "not supported by podvisor: there are no service account tokens"))
	}
	switch spec.SchedulerName {
	case "", corev1.DefaultSchedulerName, "podvisor":
	default:
		errs = append(errs, field.NotSupported(p.Child("schedulerName"), spec.SchedulerName, []string{"podvisor", corev1.DefaultSchedulerName}))
	}
	if spec.OS != nil && spec.OS.Name != corev1.Linux {
		errs = append(errs, field.NotSupported(p.Child("os", "name"), spec.OS.Name, []corev1.OSName{corev1.Linux}))
	}

	volumes, verrs := validateVolumes(spec.Volumes, p.Child("volumes"))
	errs = append(errs, verrs...)
	cp := p.Child("containers")
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(cp, "at least one container"))
	}
	names := map[string]bool{}
	ports := map[string]*field.Path{}     // "80/TCP" -> first path
	portNames := map[string]*field.Path{} // name -> first path
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		ip := p.Child("initContainers").Index(i)
		errs = append(errs, forbidUnsupported(ip, c, supportedInitContainerFields)...)
		errs = append(errs, validateContainer(c, ip, volumes)...)
		if c.Name != "" {
			if names[c.Name] {
				errs = append(errs, field.Duplicate(ip.Child("name"), c.Name))
			}
			names[c.Name] = true
		}
	}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		ip := cp.Index(i)
		errs = append(errs, forbidUnsupported(ip, c, supportedContainerFields)...)
		errs = append(errs, validateContainer(c, ip, volumes)...)
		for _, pr := range []struct {
			name  string
			probe *corev1.Probe
		}{{"livenessProbe", c.LivenessProbe}, {"readinessProbe", c.ReadinessProbe}, {"startupProbe", c.StartupProbe}} {
			errs = append(errs, validateProbe(pr.probe, ip.Child(pr.name))...)
		}
		if c.Name != "" {
			if names[c.Name] {
				errs = append(errs, field.Duplicate(ip.Child("name"), c.Name))
			}
			names[c.Name] = true
		}
		// All containers of a pod VM share one network stack, so a port may
		// be opened by only one of them.
		for j, port := range c.Ports {
			pp := ip.Child("ports").Index(j)
			proto := port.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			key := strconv.Itoa(int(port.ContainerPort)) + "/" + string(proto)
			if first, dup := ports[key]; dup && port.ContainerPort != 0 {
				errs = append(errs, field.Duplicate(pp.Child("containerPort"), key+" is already used by "+first.String()))
			} else {
				ports[key] = pp
			}
			if port.Name != "" {
				if first, dup := portNames[port.Name]; dup {
					errs = append(errs, field.Duplicate(pp.Child("name"), port.Name+" is already used by "+first.String()))
				} else {
					portNames[port.Name] = pp
				}
			}
		}
	}
	return errs
}

// validateVolumes checks the pod's volumes: emptyDir only, a directory (or
// with medium Memory a tmpfs) of the pod VM's ephemeral disk. It returns the
// volume names for the mounts to refer to.
func validateVolumes(vols []corev1.Volume, p *field.Path) (map[string]bool, field.ErrorList) {
	var errs field.ErrorList
	names := map[string]bool{}
	for i := range vols {
		v := &vols[i]
		vp := p.Index(i)
		errs = append(errs, validateDNSLabel(vp.Child("name"), v.Name)...)
		if names[v.Name] {
			errs = append(errs, field.Duplicate(vp.Child("name"), v.Name))
		}
		names[v.Name] = true
		other := forbidUnsupported(vp, &v.VolumeSource, supportedVolumeSources)
		for _, e := range other {
			e.Detail = "not supported by podvisor: a pod VM has only emptyDir volumes (on its ephemeral disk)"
			errs = append(errs, e)
		}
		if v.EmptyDir == nil {
			if len(other) == 0 {
				errs = append(errs, field.Required(vp.Child("emptyDir"), "the only volume type a pod VM has"))
			}
			continue
		}
		switch v.EmptyDir.Medium {
		case corev1.StorageMediumDefault, corev1.StorageMediumMemory:
		default:
			errs = append(errs, field.NotSupported(vp.Child("emptyDir", "medium"), v.EmptyDir.Medium,
				[]corev1.StorageMedium{corev1.StorageMediumDefault, corev1.StorageMediumMemory}))
		}
		if q := v.EmptyDir.SizeLimit; q != nil && q.Sign() < 0 {
			errs = append(errs, field.Invalid(vp.Child("emptyDir", "sizeLimit"), q.String(), "must not be negative"))
		}
	}
	return names, errs
}

// validateProbe checks a probe the pod VM agent runs: exactly one of exec,
// httpGet (numeric port) and tcpSocket (numeric port), timings not negative.
func validateProbe(pr *corev1.Probe, p *field.Path) field.ErrorList {
	if pr == nil {
		return nil
	}
	// The handler is inlined in Probe: its fields are checked on their own.
	errs := forbidUnsupported(p, pr, supportedProbeFields)
	errs = append(errs, forbidUnsupported(p, &pr.ProbeHandler, supportedProbeFields)...)
	n := 0
	if pr.Exec != nil {
		n++
		if len(pr.Exec.Command) == 0 {
			errs = append(errs, field.Required(p.Child("exec", "command"), ""))
		}
	}
	port := func(fp *field.Path, v intstr.IntOrString) {
		if v.Type != intstr.Int {
			errs = append(errs, field.Invalid(fp, v.String(), "a port number: named ports are not resolved in pod VMs"))
			return
		}
		for _, msg := range validation.IsValidPortNum(v.IntValue()) {
			errs = append(errs, field.Invalid(fp, v.IntValue(), msg))
		}
	}
	if g := pr.HTTPGet; g != nil {
		n++
		gp := p.Child("httpGet")
		errs = append(errs, forbidUnsupported(gp, g, supportedHTTPGetFields)...)
		port(gp.Child("port"), g.Port)
		switch g.Scheme {
		case "", corev1.URISchemeHTTP, corev1.URISchemeHTTPS:
		default:
			errs = append(errs, field.NotSupported(gp.Child("scheme"), g.Scheme, []corev1.URIScheme{corev1.URISchemeHTTP, corev1.URISchemeHTTPS}))
		}
	}
	if t := pr.TCPSocket; t != nil {
		n++
		port(p.Child("tcpSocket", "port"), t.Port)
	}
	if pr.GRPC != nil {
		n++
	}
	if n != 1 {
		errs = append(errs, field.Invalid(p, fmt.Sprintf("%d handlers", n), "exactly one of exec, httpGet, tcpSocket"))
	}
	for _, t := range []struct {
		name string
		v    int32
	}{{"initialDelaySeconds", pr.InitialDelaySeconds}, {"timeoutSeconds", pr.TimeoutSeconds}, {"periodSeconds", pr.PeriodSeconds},
		{"successThreshold", pr.SuccessThreshold}, {"failureThreshold", pr.FailureThreshold}} {
		errs = append(errs, validateNonNegative(p.Child(t.name), int64(t.v))...)
	}
	return errs
}

// validateContainer checks one container or init container (the caller
// applies the field allow-list, which differs between the two); volumes are
// the pod's volume names.
func validateContainer(c *corev1.Container, p *field.Path, volumes map[string]bool) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateDNSLabel(p.Child("name"), c.Name)...)
	mounts := map[string]bool{}
	for j := range c.VolumeMounts {
		m := &c.VolumeMounts[j]
		mp := p.Child("volumeMounts").Index(j)
		errs = append(errs, forbidUnsupported(mp, m, supportedVolumeMountFields)...)
		if !volumes[m.Name] {
			errs = append(errs, field.NotFound(mp.Child("name"), m.Name))
		}
		switch {
		case !path.IsAbs(m.MountPath):
			errs = append(errs, field.Invalid(mp.Child("mountPath"), m.MountPath, "must be an absolute path"))
		case mounts[path.Clean(m.MountPath)]:
			errs = append(errs, field.Duplicate(mp.Child("mountPath"), m.MountPath))
		}
		mounts[path.Clean(m.MountPath)] = true
	}
	errs = append(errs, validateImageRef(p.Child("image"), c.Image)...)
	if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
		errs = append(errs, field.Invalid(p.Child("workingDir"), c.WorkingDir, "must be an absolute path"))
	}
	for j, port := range c.Ports {
		pp := p.Child("ports").Index(j)
		for _, msg := range validation.IsValidPortNum(int(port.ContainerPort)) {
			errs = append(errs, field.Invalid(pp.Child("containerPort"), port.ContainerPort, msg))
		}
		switch port.Protocol {
		case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			errs = append(errs, field.NotSupported(pp.Child("protocol"), port.Protocol, []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}))
		}
		if port.Name != "" {
			for _, msg := range validation.IsValidPortName(port.Name) {
				errs = append(errs, field.Invalid(pp.Child("name"), port.Name, msg))
			}
		}
		if port.HostPort != 0 {
			errs = append(errs, field.Forbidden(pp.Child("hostPort"), "not supported by podvisor: a pod VM has its own address; use containerPort"))
		}
		if port.HostIP != "" {
			errs = append(errs, field.Forbidden(pp.Child("hostIP"), "not supported by podvisor: a pod VM has its own address"))
		}
	}
	envNames := map[string]bool{}
	for j, env := range c.Env {
		ep := p.Child("env").Index(j)
		if env.Name == "" {
			errs = append(errs, field.Required(ep.Child("name"), ""))
		} else {
			for _, msg := range validation.IsEnvVarName(env.Name) {
				errs = append(errs, field.Invalid(ep.Child("name"), env.Name, msg))
			}
			if envNames[env.Name] {
				errs = append(errs, field.Duplicate(ep.Child("name"), env.Name))
			}
			envNames[env.Name] = true
		}
		if env.ValueFrom != nil {
			errs = append(errs, field.Forbidden(ep.Child("valueFrom"), "not supported by podvisor: ConfigMaps, Secrets and the downward API do not exist; use value"))
		}
	}
	errs = append(errs, validateResources(&c.Resources, p.Child("resources"))...)
	// Kubernetes fills these two with its defaults when it exports a pod, so
	// the defaults are accepted; anything else would need the guest agent
	// to write termination messages, which it does not.
	if c.TerminationMessagePath != "" && c.TerminationMessagePath != corev1.TerminationMessagePathDefault {
		errs = append(errs, field.NotSupported(p.Child("terminationMessagePath"), c.TerminationMessagePath, []string{corev1.TerminationMessagePathDefault}))
	}
	if c.TerminationMessagePolicy != "" && c.TerminationMessagePolicy != corev1.TerminationMessageReadFile {
		errs = append(errs, field.NotSupported(p.Child("terminationMessagePolicy"), c.TerminationMessagePolicy, []corev1.TerminationMessagePolicy{corev1.TerminationMessageReadFile}))
	}
	switch c.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, field.NotSupported(p.Child("imagePullPolicy"), c.ImagePullPolicy, []corev1.PullPolicy{corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever}))
	}
	if sc := c.SecurityContext; sc != nil {
		sp := p.Child("securityContext")
		errs = append(errs, forbidUnsupported(sp, sc, supportedSecurityContextFields)...)
		if sc.Privileged != nil && *sc.Privileged {
			errs = append(errs, field.Forbidden(sp.Child("privileged"), "not supported by podvisor: containers in pod VMs are never privileged"))
		}
		if sc.AllowPrivilegeEscalation != nil && *sc.AllowPrivilegeEscalation {
			errs = append(errs, field.Forbidden(sp.Child("allowPrivilegeEscalation"), "not supported by podvisor: containers in pod VMs cannot escalate privileges"))
		}
		for _, id := range []struct {
			name string
			v    *int64
		}{{"runAsUser", sc.RunAsUser}, {"runAsGroup", sc.RunAsGroup}} {
			if id.v != nil && *id.v < 0 {
				errs = append(errs, field.Invalid(sp.Child(id.name), *id.v, "must not be negative"))
			}
		}
	}
	return errs
}

// Resources a container may request: the two a pod VM is sized by.
var supportedResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}

func validateResources(rr *corev1.ResourceRequirements, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, part := range []struct {
		name string
		list corev1.ResourceList
	}{{"requests", rr.Requests}, {"limits", rr.Limits}} {
		for _, rn := range sortedKeys(toStringKeys(part.list)) {
			q := part.list[corev1.ResourceName(rn)]
			rp := p.Child(part.name, rn)
			if rn != string(corev1.ResourceCPU) && rn != string(corev1.ResourceMemory) {
				errs = append(errs, field.NotSupported(rp, rn, supportedResources))
				continue
			}
			if q.Sign() < 0 {
				errs = append(errs, field.Invalid(rp, q.String(), "must not be negative"))
			}
		}
	}
	for _, rn := range supportedResources {
		req, hasReq := rr.Requests[rn]
		lim, hasLim := rr.Limits[rn]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			errs = append(errs, field.Invalid(p.Child("requests", string(rn)), req.String(), "must be less than or equal to "+string(rn)+" limit "+lim.String()))
		}
	}
	if len(rr.Claims) > 0 {
		errs = append(errs, field.Forbidden(p.Child("claims"), "not supported by podvisor: there are no dynamic resources"))
	}
	return errs
}

func toStringKeys(l corev1.ResourceList) map[string]resource.Quantity {
	m := make(map[string]resource.Quantity, len(l))
	for k, v := range l {
		m[string(k)] = v
	}
	return m
}

// validateImageRef checks that an image is an OCI reference the image cache
// can pull: "nginx", "nginx:1.27", "registry:5000/team/app@sha256:...".
func validateImageRef(p *field.Path, image string) field.ErrorList {
	if image == "" {
		return field.ErrorList{field.Required(p, "an OCI image reference such as nginx:1.27")}
	}
	if strings.TrimSpace(image) != image {
		return field.ErrorList{field.Invalid(p, image, "must not have leading or trailing spaces")}
	}
	if _, err := name.ParseReference(image); err != nil {
		return field.ErrorList{field.Invalid(p, image, "not an OCI image reference: "+err.Error())}
	}
	return nil
}

// quantityErrors finds resource quantities that do not parse in raw JSON.
// A bad quantity fails inside resource.Quantity's UnmarshalJSON, where the
// decoder no longer knows the field path; walking the raw document again
// recovers it, so "12Gx" is reported as
// pod.spec.containers[1].resources.requests.memory rather than anonymously.
func quantityErrors(data []byte) field.ErrorList {
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil
	}
	var errs field.ErrorList
	var walk func(v any, p *field.Path, key, parent string)
	walk = func(v any, p *field.Path, key, parent string) {
		switch t := v.(type) {
		case map[string]any:
			if (key == "requests" || key == "limits") && parent == "resources" || key == "overhead" {
				for _, k := range sortedKeys(t) {
					if s, ok := t[k].(string); ok {
						if _, err := resource.ParseQuantity(s); err != nil {
							errs = append(errs, field.Invalid(p.Child(k), s, "invalid quantity: want a number with an optional suffix such as 500m, 2, 512Mi or 4Gi"))
						}
					} else if _, isNum := t[k].(float64); !isNum {
						errs = append(errs, field.Invalid(p.Child(k), t[k], "invalid quantity: want a string such as 512Mi"))
					}
				}
				return
			}
			for _, k := range sortedKeys(t) {
				walk(t[k], pathChild(p, k), k, key)
			}
		case []any:
			for i, e := range t {
				walk(e, p.Index(i), key, parent)
			}
		}
	}
	walk(doc, nil, "", "")
	return errs
}

// pathChild is p.Child that also works for the document root (nil path).
func pathChild(p *field.Path, name string) *field.Path {
	if p == nil {
		return field.NewPath(name)
	}
	return p.Child(name)
}

// Host-level topology keys a pod anti-affinity term may name: pod VMs are
// spread per hypervisor host.
const (
	TopologyKeyHostname = "kubernetes.io/hostname"
	TopologyKeyHost     = "podvisor.io/host"
)

// validateAffinity admits the part of Kubernetes affinity the scheduler
// implements — required node affinity over host labels and required pod
// anti-affinity per host — and refuses the rest by name, so that no rule is
// silently ignored.
func validateAffinity(a *corev1.Affinity, p *field.Path) field.ErrorList {
	if a == nil {
		return nil
	}
	var errs field.ErrorList
	if a.PodAffinity != nil {
		errs = append(errs, field.Forbidden(p.Child("podAffinity"), "not supported by podvisor: only requiredDuringSchedulingIgnoredDuringExecution podAntiAffinity per host is supported"))
	}
	if na := a.NodeAffinity; na != nil {
		np := p.Child("nodeAffinity")
		if len(na.PreferredDuringSchedulingIgnoredDuringExecution) > 0 {
			errs = append(errs, field.Forbidden(np.Child("preferredDuringSchedulingIgnoredDuringExecution"), "not supported by podvisor: only requiredDuringSchedulingIgnoredDuringExecution node affinity is supported"))
		}
		if req := na.RequiredDuringSchedulingIgnoredDuringExecution; req != nil {
			tp := np.Child("requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
			if len(req.NodeSelectorTerms) == 0 {
				errs = append(errs, field.Required(tp, "at least one term"))
			}
			for i, t := range req.NodeSelectorTerms {
				if len(t.MatchFields) > 0 {
					errs = append(errs, field.Forbidden(tp.Index(i).Child("matchFields"), "not supported by podvisor: hosts have no fields, use matchExpressions on host labels"))
				}
				for j, e := range t.MatchExpressions {
					ep := tp.Index(i).Child("matchExpressions").Index(j)
					errs = append(errs, validateLabelKey(ep.Child("key"), e.Key)...)
					switch e.Operator {
					case corev1.NodeSelectorOpIn, corev1.NodeSelectorOpNotIn, corev1.NodeSelectorOpExists, corev1.NodeSelectorOpDoesNotExist:
					default:
						errs = append(errs, field.NotSupported(ep.Child("operator"), e.Operator, []corev1.NodeSelectorOperator{
							corev1.NodeSelectorOpIn, corev1.NodeSelectorOpNotIn, corev1.NodeSelectorOpExists, corev1.NodeSelectorOpDoesNotExist}))
					}
				}
			}
		}
	}
	if pa := a.PodAntiAffinity; pa != nil {
		pp := p.Child("podAntiAffinity")
		if len(pa.PreferredDuringSchedulingIgnoredDuringExecution) > 0 {
			errs = append(errs, field.Forbidden(pp.Child("preferredDuringSchedulingIgnoredDuringExecution"), "not supported by podvisor: only requiredDuringSchedulingIgnoredDuringExecution pod anti-affinity is supported"))
		}
		for i, t := range pa.RequiredDuringSchedulingIgnoredDuringExecution {
			tp := pp.Child("requiredDuringSchedulingIgnoredDuringExecution").Index(i)
			if t.TopologyKey != TopologyKeyHostname && t.TopologyKey != TopologyKeyHost {
				errs = append(errs, field.NotSupported(tp.Child("topologyKey"), t.TopologyKey, []string{TopologyKeyHostname, TopologyKeyHost}))
			}
			if t.LabelSelector == nil {
				errs = append(errs, field.Required(tp.Child("labelSelector"), "a term without a selector matches no pod"))
			} else if _, err := metav1.LabelSelectorAsSelector(t.LabelSelector); err != nil {
				errs = append(errs, field.Invalid(tp.Child("labelSelector"), t.LabelSelector, err.Error()))
			}
			if t.NamespaceSelector != nil {
				errs = append(errs, field.Forbidden(tp.Child("namespaceSelector"), "not supported by podvisor: list namespaces instead"))
			}
			if len(t.MatchLabelKeys) > 0 || len(t.MismatchLabelKeys) > 0 {
				errs = append(errs, field.Forbidden(tp.Child("matchLabelKeys"), "not supported by podvisor"))
			}
			for j, ns := range t.Namespaces {
				errs = append(errs, validateDNSLabel(tp.Child("namespaces").Index(j), ns)...)
			}
		}
	}
	return errs
}

func validateLabelKey(p *field.Path, k string) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsQualifiedName(k) {
		errs = append(errs, field.Invalid(p, k, msg))
	}
	return errs
}
