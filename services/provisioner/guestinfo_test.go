package provisioner

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// chainDisk is an image disk path as the image cache names it.
func chainDisk(n int) string {
	return fmt.Sprintf("[shared-ds] %s/%064x/disk.vmdk", events.ImageRoot, n)
}

// specRecord is a record ready for its VM: containers with the given
// images (chains of chainDisk numbers, base first).
func specRecord(mutate func(*corev1.Pod), chains map[string][]int) *events.PodRecord {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}}
	pod.Name = "web"
	if mutate != nil {
		mutate(pod)
	}
	r := &events.PodRecord{UID: "u1", Namespace: "default", Name: pod.Name, VMName: "pv-u1", Pod: *pod,
		Attachments: []events.NetworkAttachment{{Network: "default", PortGroup: "pv-default", IP: "10.0.0.5", PrefixLength: 24, Gateway: "10.0.0.1", MAC: "00:50:56:00:00:05"}}}
	for _, c := range events.PodContainers(pod) {
		img := events.ContainerImage{Container: c.Name, Image: c.Image, Digest: "sha256:" + strings.Repeat("d", 64), Datastore: "shared-ds"}
		for _, n := range chains[c.Name] {
			img.Chain = append(img.Chain, chainDisk(n))
		}
		if len(img.Chain) > 0 {
			img.Disk = img.Chain[len(img.Chain)-1]
		}
		r.Images = append(r.Images, img)
	}
	return r
}

func TestGuestSpecFromRecord(t *testing.T) {
	id := func(n int) string { return fmt.Sprintf("sha256:%064x", n) }
	tests := []struct {
		name   string
		mutate func(*corev1.Pod)
		chains map[string][]int
		check  func(t *testing.T, s *guestchannel.PodSpec, imageDisks []string)
	}{
		{
			name:   "defaults",
			chains: map[string][]int{"app": {1, 2}},
			check: func(t *testing.T, s *guestchannel.PodSpec, disks []string) {
				if s.RestartPolicy != "Always" || s.TerminationGracePeriodSeconds != 30 || s.Hostname != "web" || s.UID != "u1" {
					t.Errorf("policy %s grace %d hostname %s uid %s", s.RestartPolicy, s.TerminationGracePeriodSeconds, s.Hostname, s.UID)
				}
				if len(s.Disks) != 3 || s.Disks[0].Role != guestchannel.DiskEphemeral || s.Disks[0].Unit != "scsi0:0" ||
					s.Disks[0].Path != "[shared-ds] pv-u1/ephemeral.vmdk" || s.Disks[1].Unit != "scsi0:1" || s.Disks[2].Unit != "scsi0:2" {
					t.Errorf("disks = %+v", s.Disks)
				}
				if s.Disks[1].ChainID != id(1) || s.Disks[1].Parent != "" || s.Disks[2].ChainID != id(2) || s.Disks[2].Parent != id(1) || s.Disks[2].FS != "erofs" {
					t.Errorf("chain links = %+v", s.Disks[1:])
				}
				if c := s.Containers[0]; len(c.Chain) != 2 || c.Chain[0] != id(2) || c.Chain[1] != id(1) || c.ImageDigest == "" || c.Image != "app:1" {
					t.Errorf("container = %+v, want the chain top first", c)
				}
				if len(disks) != 2 || disks[0] != chainDisk(1) || disks[1] != chainDisk(2) {
					t.Errorf("image disks to attach = %v", disks)
				}
				if len(s.NICs) != 1 || s.NICs[0] != (guestchannel.NIC{Network: "default", MAC: "00:50:56:00:00:05", IP: "10.0.0.5", Prefix: 24, Gateway: "10.0.0.1"}) {
					t.Errorf("nics = %+v", s.NICs)
				}
			},
		},
		{
			name: "shared images are attached once",
			mutate: func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "twin", Image: "app:1"}, corev1.Container{Name: "other", Image: "other:1"})
			},
			chains: map[string][]int{"app": {1, 2}, "twin": {1, 2}, "other": {1, 3}},
			check: func(t *testing.T, s *guestchannel.PodSpec, disks []string) {
				if len(disks) != 3 || len(s.Disks) != 4 {
					t.Fatalf("%d image disks (%v) and %d spec disks; want 3 and 4", len(disks), disks, len(s.Disks))
				}
				if strings.Join(s.Containers[0].Chain, ",") != strings.Join(s.Containers[1].Chain, ",") || s.Containers[2].Chain[1] != id(1) {
					t.Errorf("chains %v / %v / %v", s.Containers[0].Chain, s.Containers[1].Chain, s.Containers[2].Chain)
				}
			},
		},
		{
			name: "manifest fields",
			mutate: func(p *corev1.Pod) {
				p.Name = strings.Repeat("n", 62) + "-xyz" // cut at 63, the '-' left at the end trimmed
				p.Spec.RestartPolicy = corev1.RestartPolicyNever
				p.Spec.TerminationGracePeriodSeconds = new(int64)
				p.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
					Medium: corev1.StorageMediumMemory, SizeLimit: ptrTo(resource.MustParse("64Mi"))}}}}
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox:1", Command: []string{"sh", "-c", "true"},
					VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/s"}}}}
				uid, yes := int64(1000), true
				p.Spec.Containers[0] = corev1.Container{Name: "app", Image: "app:1", Command: []string{"/app"}, Args: []string{"-v"},
					WorkingDir: "/srv", Env: []corev1.EnvVar{{Name: "A", Value: "1"}},
					Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &uid, RunAsNonRoot: &yes, ReadOnlyRootFilesystem: &yes},
					Resources: corev1.ResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
						Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("128Mi")}},
					VolumeMounts:   []corev1.VolumeMount{{Name: "scratch", MountPath: "/s", ReadOnly: true}},
					LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(80)}}, PeriodSeconds: 2},
					StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}, FailureThreshold: 30},
				}
			},
			chains: map[string][]int{"app": {1}, "init": {9}},
			check: func(t *testing.T, s *guestchannel.PodSpec, disks []string) {
				if s.RestartPolicy != "Never" || s.TerminationGracePeriodSeconds != 0 || s.Hostname != strings.Repeat("n", 62) {
					t.Errorf("policy %s grace %d hostname %q", s.RestartPolicy, s.TerminationGracePeriodSeconds, s.Hostname)
				}
				if len(s.Volumes) != 1 || s.Volumes[0].EmptyDir.Medium != "Memory" || s.Volumes[0].EmptyDir.SizeLimitBytes != 64<<20 {
					t.Errorf("volumes = %+v", s.Volumes)
				}
				if len(s.InitContainers) != 1 || s.InitContainers[0].Chain[0] != id(9) || s.InitContainers[0].VolumeMounts[0].MountPath != "/s" {
					t.Errorf("init containers = %+v", s.InitContainers)
				}
				c := s.Containers[0]
				if strings.Join(c.Command, " ") != "/app" || c.Args[0] != "-v" || c.WorkingDir != "/srv" || c.Env[0] != (guestchannel.EnvVar{Name: "A", Value: "1"}) ||
					c.Ports[0].ContainerPort != 80 || *c.RunAsUser != 1000 || !c.RunAsNonRoot || !c.ReadOnlyRootFilesystem || !c.VolumeMounts[0].ReadOnly {
					t.Errorf("container = %+v", c)
				}
				if c.Resources != (guestchannel.Resources{CPURequestMilli: 250, CPULimitMilli: 1000, MemoryRequestBytes: 64 << 20, MemoryLimitBytes: 128 << 20}) {
					t.Errorf("resources = %+v", c.Resources)
				}
				if p := c.LivenessProbe; p == nil || p.Exec == nil || p.PeriodSeconds != 10 || p.TimeoutSeconds != 1 || p.SuccessThreshold != 1 || p.FailureThreshold != 3 {
					t.Errorf("liveness = %+v, want Kubernetes' defaults", p)
				}
				if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Port != 80 || p.HTTPGet.Path != "/" || p.HTTPGet.Scheme != "HTTP" || p.PeriodSeconds != 2 {
					t.Errorf("readiness = %+v", p)
				}
				if p := c.StartupProbe; p == nil || p.TCPSocket == nil || p.TCPSocket.Port != 80 || p.FailureThreshold != 30 {
					t.Errorf("startup = %+v", p)
				}
				// Entrypoint, Cmd and User come from the image config,
				// which the image record does not carry yet.
				if c.Entrypoint != nil || c.Cmd != nil || c.User != "" {
					t.Errorf("image config fields set from nowhere: %+v", c)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := specRecord(tt.mutate, tt.chains)
			l, err := layout(r, "shared-ds")
			if err != nil {
				t.Fatalf("layout: %v", err)
			}
			info, err := guestinfo(r, l)
			if err != nil {
				t.Fatalf("guestinfo: %v", err)
			}
			back, err := guestchannel.UnmarshalSpec([]byte(info[guestchannel.GuestinfoSpec]))
			if err != nil {
				t.Fatalf("the spec in guestinfo does not decode: %v", err)
			}
			if info["guestinfo.podvisor.uid"] != "u1" || info["guestinfo.podvisor.name"] != r.Name {
				t.Errorf("human-readable keys: %v", info)
			}
			tt.check(t, back, l.imageDisks)
		})
	}

	// A container without a prepared image is the caller's bug, named.
	r := specRecord(nil, map[string][]int{"app": {1}})
	r.Images = nil
	if _, err := layout(r, "shared-ds"); err == nil || !strings.Contains(err.Error(), "container app") {
		t.Errorf("layout without images = %v", err)
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestGuestSpecCarriesImageConfig: the image's Entrypoint, Cmd, Env, User
// and WorkingDir reach the guest spec beside the manifest's fields, the
// manifest winning where Kubernetes says it does.
func TestGuestSpecCarriesImageConfig(t *testing.T) {
	uid := int64(1000)
	r := specRecord(func(p *corev1.Pod) {
		p.Spec.Containers = []corev1.Container{
			{Name: "plain", Image: "app:1"},
			{Name: "args", Image: "app:1", Args: []string{"--port", "81"}, WorkingDir: "/data",
				Env: []corev1.EnvVar{{Name: "MODE", Value: "manifest"}, {Name: "EXTRA", Value: "x"}}},
			{Name: "cmd", Image: "app:1", Command: []string{"/bin/other"}, SecurityContext: &corev1.SecurityContext{RunAsUser: &uid}},
			{Name: "bare", Image: "bare:1", Command: []string{"/bin/true"}},
		}
	}, map[string][]int{"plain": {1}, "args": {1}, "cmd": {1}, "bare": {2}})
	cfg := &events.ImageConfig{Entrypoint: []string{"/bin/app"}, Cmd: []string{"--port", "80"}, User: "app:app",
		WorkingDir: "/srv", Env: []string{"PATH=/bin", "MODE=image", "LANG=C"}, ExposedPorts: []string{"80/tcp"}}
	for i := range r.Images[:3] {
		r.Images[i].Config = cfg
	}
	l, err := layout(r, "shared-ds")
	if err != nil {
		t.Fatal(err)
	}
	info, err := guestinfo(r, l)
	if err != nil {
		t.Fatal(err)
	}
	s, err := guestchannel.UnmarshalSpec([]byte(info[guestchannel.GuestinfoSpec]))
	if err != nil {
		t.Fatal(err)
	}
	env := func(c guestchannel.Container) string {
		var b strings.Builder
		for _, e := range c.Env {
			b.WriteString(e.Name + "=" + e.Value + " ")
		}
		return strings.TrimSpace(b.String())
	}
	plain, args, cmd, bare := s.Containers[0], s.Containers[1], s.Containers[2], s.Containers[3]
	if strings.Join(plain.Entrypoint, " ") != "/bin/app" || strings.Join(plain.Cmd, " ") != "--port 80" || len(plain.Command)+len(plain.Args) != 0 ||
		plain.WorkingDir != "/srv" || plain.User != "app:app" || env(plain) != "PATH=/bin MODE=image LANG=C" {
		t.Errorf("plain = %+v, want the image's config as is", plain)
	}
	if strings.Join(args.Args, " ") != "--port 81" || strings.Join(args.Entrypoint, " ") != "/bin/app" || args.WorkingDir != "/data" ||
		env(args) != "PATH=/bin MODE=manifest LANG=C EXTRA=x" {
		t.Errorf("args = %+v, want the manifest's args, workingDir and env over the image's", args)
	}
	if strings.Join(cmd.Command, " ") != "/bin/other" || cmd.RunAsUser == nil || *cmd.RunAsUser != 1000 || cmd.User != "app:app" {
		t.Errorf("cmd = %+v, want the command and runAsUser beside the image's user", cmd)
	}
	if bare.Entrypoint != nil || bare.Cmd != nil || bare.WorkingDir != "" || bare.User != "" || len(bare.Env) != 0 {
		t.Errorf("bare = %+v, want nothing from an image without a config", bare)
	}
}

// The networks' DNS services become the guest's resolver; a pod on a
// network without one keeps its image's resolv.conf.
func TestGuestSpecDNSFromAttachments(t *testing.T) {
	r := specRecord(nil, map[string][]int{"app": {1}})
	r.Namespace = "shop"
	r.Attachments[0].Nameservers = []string{"10.0.0.2"}
	r.Attachments = append(r.Attachments, events.NetworkAttachment{Network: "b", PortGroup: "pv-b", IP: "10.1.0.5", PrefixLength: 24,
		MAC: "00:50:56:00:00:06", Nameservers: []string{"10.1.0.2", "10.0.0.2"}})
	l, err := layout(r, "shared-ds")
	if err != nil {
		t.Fatal(err)
	}
	if d := l.spec.DNS; d == nil || !slices.Equal(d.Nameservers, []string{"10.0.0.2", "10.1.0.2"}) ||
		!slices.Equal(d.Searches, []string{"shop.pod.podvisor.local", "pod.podvisor.local"}) {
		t.Fatalf("dns = %+v", l.spec.DNS)
	}
	r = specRecord(nil, map[string][]int{"app": {1}})
	if l, _ := layout(r, "shared-ds"); l.spec.DNS != nil {
		t.Fatalf("dns without a DNS service = %+v", l.spec.DNS)
	}
}
