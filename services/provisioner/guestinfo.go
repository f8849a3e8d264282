package provisioner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/vmware/govmomi/vim25/types"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Guestinfo keys of a pod VM. The pod VM agent reads only the spec; the
// others are for people (`govc vm.info -e`) and for drift repair, which
// matches VMs to records by uid.
//
//	guestinfo.podvisor.uid                pod uid
//	guestinfo.podvisor.namespace / .name  pod key
//	guestinfo.podvisor.spec               guestchannel.PodSpec as JSON
const (
	keyUID       = podvm.UIDKey
	keyNamespace = podvm.NamespaceKey
	keyName      = podvm.PodKey
	keySpec      = guestchannel.GuestinfoSpec
)

// Kubernetes' defaults for what a manifest may leave unset.
const (
	defaultGracePeriodSeconds = 30
	defaultProbePeriod        = 10
	defaultProbeTimeout       = 1
	defaultProbeSuccess       = 1
	defaultProbeFailure       = 3
	// maxHostname is the longest hostname a pod gets, as in Kubernetes:
	// a DNS label (Linux would take 64).
	maxHostname = 63
)

// vmLayout is what the record says the pod VM looks like inside: the guest
// spec, and the image disks to attach in unit order after disk 0.
type vmLayout struct {
	spec       *guestchannel.PodSpec
	imageDisks []string
}

// guestinfo builds the ExtraConfig of a pod VM from its layout.
func guestinfo(r *events.PodRecord, l vmLayout) (map[string]string, error) {
	spec, err := guestchannel.MarshalSpec(l.spec)
	if err != nil {
		return nil, fmt.Errorf("guest spec of %s: %w", r.Key(), err)
	}
	return map[string]string{
		keyUID:       r.UID,
		keyNamespace: r.Namespace,
		keyName:      r.Name,
		keySpec:      spec,
	}, nil
}

// powerOn powers the pod's existing VM ref on, in place: its guest spec
// first marks the containers that terminated for good (markCompleted).
func (s *Service) powerOn(ctx context.Context, r *events.PodRecord, ref types.ManagedObjectReference) error {
	if err := s.markCompleted(ctx, r, ref); err != nil {
		return err
	}
	return s.stepCtx(ctx, func(ctx context.Context) error { return s.vms.PowerOn(ctx, ref) })
}

// markCompleted tells the next boot of the pod's VM ref which containers
// terminated for good (completedContainers), as a new pod VM's spec does.
// A VM powered on again in place (drift repair's power cycle, a VM found
// off) keeps the spec it was made with, from before they terminated, and
// its guest would run them again on the same disk 0: their work done
// twice, a restart counted. The guest reads its spec at boot, so the
// VM's spec is rewritten before the power-on, and only when a mark is
// missing or differs: a retry, or another replica, finds the marks there
// and writes nothing. Only the marks change; the rest of the spec (disks,
// nonce, token) stays the VM's own. No mark is taken away: a container's
// end for good is final.
func (s *Service) markCompleted(ctx context.Context, r *events.PodRecord, ref types.ManagedObjectReference) error {
	completed := completedContainers(r)
	if len(completed) == 0 {
		return nil
	}
	var raw string
	if err := s.stepCtx(ctx, func(ctx context.Context) (err error) {
		raw, err = s.vms.ExtraConfigValue(ctx, ref, keySpec)
		return err
	}); err != nil {
		return fmt.Errorf("guest spec of pod VM %s: %w", ref.Value, err)
	}
	spec, err := guestchannel.UnmarshalSpec([]byte(raw))
	if err != nil {
		return fmt.Errorf("guest spec of pod VM %s: %w", ref.Value, err)
	}
	var marked []string
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if want := completed[c.Name]; want != nil && !sameState(c.Completed, want) {
			c.Completed = want
			marked = append(marked, c.Name)
		}
	}
	if len(marked) == 0 {
		return nil
	}
	out, err := guestchannel.MarshalSpec(spec)
	if err != nil {
		return fmt.Errorf("guest spec of pod VM %s: %w", ref.Value, err)
	}
	if err := s.stepCtx(ctx, func(ctx context.Context) error {
		return s.vms.SetExtraConfig(ctx, ref, map[string]string{keySpec: out})
	}); err != nil {
		return fmt.Errorf("mark completed containers in the guest spec: %w", err)
	}
	s.log.Info("guest spec marks the containers that terminated for good before the VM boots again",
		"key", r.Key(), "vm", ref.Value, "containers", strings.Join(marked, ","))
	return nil
}

// sameState says whether two container states read the same to a guest.
func sameState(a, b *guestchannel.ContainerState) bool {
	ja, erra := json.Marshal(a)
	jb, errb := json.Marshal(b)
	return erra == nil && errb == nil && bytes.Equal(ja, jb)
}

// layout derives the pod VM's disks and the guest spec from the record:
// disk 0 is the ephemeral disk; then every image chain disk any container
// references, each once (two containers of one image, or two images sharing
// base layers, share the disks), in the order first met walking the
// containers' chains base first. datastore holds the VM's files. A
// container that terminated for good in an earlier boot of the pod is
// marked completed (completedContainers): the new guest does not run it.
func layout(r *events.PodRecord, datastore string) (vmLayout, error) {
	images := imagesByContainer(r)
	s := &guestchannel.PodSpec{
		Version:                       guestchannel.SpecVersion,
		UID:                           r.UID,
		Namespace:                     r.Namespace,
		Name:                          r.Name,
		Hostname:                      hostname(r.Name),
		RestartPolicy:                 string(r.Pod.Spec.RestartPolicy),
		TerminationGracePeriodSeconds: defaultGracePeriodSeconds,
		Disks: []guestchannel.Disk{{
			Role: guestchannel.DiskEphemeral, Unit: podvm.DiskDevice(0), FS: "ext4",
			Path: podvm.EphemeralDiskPath(datastore, r.VMName),
		}},
	}
	if s.RestartPolicy == "" {
		s.RestartPolicy = string(corev1.RestartPolicyAlways)
	}
	if events.PodEphemeralEncryption(&r.Pod) {
		if r.Encryption == nil || r.Encryption.Nonce == "" {
			// Never a VM without encryption for a pod that asked for it.
			return vmLayout{}, fmt.Errorf("pod %s asks for an encrypted ephemeral disk and has no key yet", r.Key())
		}
		// The nonce only: the key never goes into the VM's configuration.
		s.Encryption = &guestchannel.Encryption{Nonce: r.Encryption.Nonce}
	}
	if g := r.Pod.Spec.TerminationGracePeriodSeconds; g != nil {
		s.TerminationGracePeriodSeconds = *g
	}
	var l vmLayout
	unitOf := map[string]bool{} // image disk path → attached
	container := func(c corev1.Container) (guestchannel.Container, error) {
		img, ok := images[c.Name]
		if !ok {
			return guestchannel.Container{}, fmt.Errorf("container %s: no prepared image", c.Name)
		}
		gc := containerSpec(c)
		withImageConfig(&gc, img.Config)
		gc.ImageDigest = img.Digest
		parent := ""
		for _, path := range img.Chain {
			id := chainID(path)
			if !unitOf[path] {
				unitOf[path] = true
				l.imageDisks = append(l.imageDisks, path)
				s.Disks = append(s.Disks, guestchannel.Disk{
					Role: guestchannel.DiskImage, Unit: podvm.DiskDevice(len(l.imageDisks)), FS: "erofs",
					ChainID: id, Parent: parent, Path: path,
				})
			}
			parent = id
			gc.Chain = append([]string{id}, gc.Chain...) // top first
		}
		return gc, nil
	}
	for _, c := range r.Pod.Spec.InitContainers {
		gc, err := container(c)
		if err != nil {
			return vmLayout{}, err
		}
		s.InitContainers = append(s.InitContainers, gc)
	}
	completed := completedContainers(r)
	for _, c := range r.Pod.Spec.Containers {
		gc, err := container(c)
		if err != nil {
			return vmLayout{}, err
		}
		gc.Completed = completed[c.Name]
		gc.LivenessProbe = probeSpec(c.LivenessProbe)
		gc.ReadinessProbe = probeSpec(c.ReadinessProbe)
		gc.StartupProbe = probeSpec(c.StartupProbe)
		s.Containers = append(s.Containers, gc)
	}
	for _, v := range r.Pod.Spec.Volumes {
		if v.EmptyDir == nil {
			continue // admission admits emptyDir only
		}
		ed := &guestchannel.EmptyDir{Medium: string(v.EmptyDir.Medium)}
		if q := v.EmptyDir.SizeLimit; q != nil {
			ed.SizeLimitBytes = q.Value()
		}
		s.Volumes = append(s.Volumes, guestchannel.Volume{Name: v.Name, EmptyDir: ed})
	}
	var nameservers []string
	for _, a := range r.Attachments {
		s.NICs = append(s.NICs, guestchannel.NIC{Network: a.Network, MAC: a.MAC, IP: a.IP, Prefix: a.PrefixLength, Gateway: a.Gateway})
		for _, ns := range a.Nameservers {
			if !slices.Contains(nameservers, ns) && len(nameservers) < 3 {
				nameservers = append(nameservers, ns)
			}
		}
	}
	if len(nameservers) > 0 {
		// The networks' DNS services; a short name resolves in the pod's
		// own namespace first, as a Kubernetes pod's does.
		s.DNS = &guestchannel.DNSConfig{Nameservers: nameservers,
			Searches: []string{r.Namespace + "." + events.DNSDomain, events.DNSDomain}}
	}
	l.spec = s
	return l, nil
}

// withImageConfig completes a container's spec from its image's config with
// Kubernetes' rules: Entrypoint and Cmd go to the agent, which runs command
// (or else Entrypoint) followed by args (or, without command or args, Cmd);
// the image's environment comes first, a manifest variable of the same name
// replacing it in place (as containerd does); workingDir defaults to the
// image's; the image's user applies unless the securityContext names one
// (the agent resolves it in the container's root). An image without a
// config (or an event from a version that did not send it) leaves the
// manifest's fields alone.
func withImageConfig(gc *guestchannel.Container, cfg *events.ImageConfig) {
	if cfg == nil {
		return
	}
	gc.Entrypoint, gc.Cmd, gc.User = cfg.Entrypoint, cfg.Cmd, cfg.User
	if gc.WorkingDir == "" {
		gc.WorkingDir = cfg.WorkingDir
	}
	if len(cfg.Env) == 0 {
		return
	}
	env := make([]guestchannel.EnvVar, 0, len(cfg.Env)+len(gc.Env))
	at := map[string]int{}
	for _, kv := range cfg.Env {
		name, value, _ := strings.Cut(kv, "=")
		if i, ok := at[name]; ok {
			env[i].Value = value
			continue
		}
		at[name] = len(env)
		env = append(env, guestchannel.EnvVar{Name: name, Value: value})
	}
	for _, e := range gc.Env {
		if i, ok := at[e.Name]; ok {
			env[i].Value = e.Value
			continue
		}
		at[e.Name] = len(env)
		env = append(env, e)
	}
	gc.Env = env
}

// containerSpec is the part of a container's guest spec that comes from
// the manifest; withImageConfig adds the image's.
func containerSpec(c corev1.Container) guestchannel.Container {
	gc := guestchannel.Container{
		Name:       c.Name,
		Image:      c.Image,
		Command:    c.Command,
		Args:       c.Args,
		WorkingDir: c.WorkingDir,
	}
	for _, e := range c.Env {
		gc.Env = append(gc.Env, guestchannel.EnvVar{Name: e.Name, Value: e.Value}) // admission refuses valueFrom
	}
	for _, p := range c.Ports {
		gc.Ports = append(gc.Ports, guestchannel.Port{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: string(p.Protocol)})
	}
	if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
		gc.Resources.CPURequestMilli = q.MilliValue()
	}
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		gc.Resources.CPULimitMilli = q.MilliValue()
	}
	if q, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
		gc.Resources.MemoryRequestBytes = q.Value()
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		gc.Resources.MemoryLimitBytes = q.Value()
	}
	for _, m := range c.VolumeMounts {
		gc.VolumeMounts = append(gc.VolumeMounts, guestchannel.VolumeMount{Name: m.Name, MountPath: m.MountPath, ReadOnly: m.ReadOnly})
	}
	if sc := c.SecurityContext; sc != nil {
		gc.RunAsUser, gc.RunAsGroup = sc.RunAsUser, sc.RunAsGroup
		gc.RunAsNonRoot = sc.RunAsNonRoot != nil && *sc.RunAsNonRoot
		gc.ReadOnlyRootFilesystem = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	}
	return gc
}

// probeSpec converts a probe, with Kubernetes' defaults for the timings a
// manifest leaves at zero.
func probeSpec(p *corev1.Probe) *guestchannel.Probe {
	if p == nil {
		return nil
	}
	or := func(v, def int32) int32 {
		if v == 0 {
			return def
		}
		return v
	}
	out := &guestchannel.Probe{
		InitialDelaySeconds: p.InitialDelaySeconds,
		PeriodSeconds:       or(p.PeriodSeconds, defaultProbePeriod),
		TimeoutSeconds:      or(p.TimeoutSeconds, defaultProbeTimeout),
		SuccessThreshold:    or(p.SuccessThreshold, defaultProbeSuccess),
		FailureThreshold:    or(p.FailureThreshold, defaultProbeFailure),
	}
	switch {
	case p.Exec != nil:
		out.Exec = &guestchannel.ExecAction{Command: p.Exec.Command}
	case p.HTTPGet != nil:
		out.HTTPGet = &guestchannel.HTTPGetAction{Path: p.HTTPGet.Path, Port: portNumber(p.HTTPGet.Port),
			Host: p.HTTPGet.Host, Scheme: string(p.HTTPGet.Scheme)}
		if out.HTTPGet.Path == "" {
			out.HTTPGet.Path = "/"
		}
		if out.HTTPGet.Scheme == "" {
			out.HTTPGet.Scheme = string(corev1.URISchemeHTTP)
		}
	case p.TCPSocket != nil:
		out.TCPSocket = &guestchannel.TCPSocketAction{Port: portNumber(p.TCPSocket.Port), Host: p.TCPSocket.Host}
	}
	return out
}

// portNumber is a probe's port: admission admits numbers only.
func portNumber(v intstr.IntOrString) int32 { return int32(v.IntValue()) }

// imageDiskRE matches an image disk's path as the image cache names it:
// "[ds] podvisor-images/<chainID hex>/disk.vmdk".
var imageDiskRE = regexp.MustCompile(regexp.QuoteMeta(events.ImageRoot) + `/([0-9a-f]{64})/disk\.vmdk$`)

// chainID is the OCI chainID of the layer prefix an image disk holds, read
// from its path. A disk named otherwise (a test's, an older layout) gets a
// stable id from its path, so the guest can still stack the chain.
func chainID(path string) string {
	if m := imageDiskRE.FindStringSubmatch(path); m != nil {
		return "sha256:" + m[1]
	}
	sum := sha256.Sum256([]byte(path))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// hostname is the guest's UTS name: the pod name cut to a DNS label, as
// Kubernetes does (63 characters, no '-' or '.' left at the end).
func hostname(name string) string {
	if len(name) > maxHostname {
		name = strings.TrimRight(name[:maxHostname], "-.")
	}
	return name
}

func imagesByContainer(r *events.PodRecord) map[string]events.ContainerImage {
	out := make(map[string]events.ContainerImage, len(r.Images))
	for _, img := range r.Images {
		out[img.Container] = img
	}
	return out
}
