package events

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// newPod builds a valid one-container pod; tests mutate it.
func newPod(mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "nginx",
			Image: "nginx:1.27",
		}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func addContainer(name, image string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: name, Image: image})
	}
}

func resources(i int, requests, limits map[corev1.ResourceName]string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		rr := corev1.ResourceRequirements{}
		if requests != nil {
			rr.Requests = corev1.ResourceList{}
			for k, v := range requests {
				rr.Requests[k] = resource.MustParse(v)
			}
		}
		if limits != nil {
			rr.Limits = corev1.ResourceList{}
			for k, v := range limits {
				rr.Limits[k] = resource.MustParse(v)
			}
		}
		p.Spec.Containers[i].Resources = rr
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidatePod(t *testing.T) {
	tests := []struct {
		name   string
		pod    *corev1.Pod
		fields []string // every field path the error must name, in order
		reason string   // a substring of the message
	}{
		{name: "minimal pod is valid", pod: newPod()},
		{name: "typical pod is valid", pod: newPod(addContainer("sidecar", "registry.local:5000/team/agent@sha256:"+strings.Repeat("a", 64)),
			resources(0, map[corev1.ResourceName]string{"cpu": "500m", "memory": "256Mi"}, map[corev1.ResourceName]string{"cpu": "1", "memory": "1Gi"}),
			func(p *corev1.Pod) {
				p.Namespace = "shop"
				p.Labels = map[string]string{"app": "web"}
				p.Annotations = map[string]string{AnnotationNetworks: "frontend, backend", "team": "x"}
				p.Spec.RestartPolicy = corev1.RestartPolicyAlways
				p.Spec.NodeSelector = map[string]string{"rack": "r12"}
				p.Spec.DNSPolicy = corev1.DNSClusterFirst
				p.Spec.SchedulerName = corev1.DefaultSchedulerName
				p.Spec.ServiceAccountName = "default"
				p.Spec.EnableServiceLinks = ptr(true)
				c := &p.Spec.Containers[0]
				c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 80}, {ContainerPort: 53, Protocol: corev1.ProtocolUDP}}
				c.Env = []corev1.EnvVar{{Name: "MODE", Value: "prod"}}
				c.TerminationMessagePath = corev1.TerminationMessagePathDefault
				c.TerminationMessagePolicy = corev1.TerminationMessageReadFile
				c.ImagePullPolicy = corev1.PullIfNotPresent
				c.SecurityContext = &corev1.SecurityContext{Privileged: ptr(false), RunAsUser: ptr(int64(1000)), ReadOnlyRootFilesystem: ptr(true)}
			})},
		{name: "wrong apiVersion and kind", pod: newPod(func(p *corev1.Pod) { p.APIVersion, p.Kind = "apps/v1", "Deployment" }),
			fields: []string{"pod.apiVersion", "pod.kind"}, reason: "supported values"},
		{name: "missing name", pod: newPod(func(p *corev1.Pod) { p.Name = "" }), fields: []string{"pod.metadata.name"}, reason: "Required"},
		{name: "generateName", pod: newPod(func(p *corev1.Pod) { p.Name, p.GenerateName = "", "web-" }), fields: []string{"pod.metadata.name"}, reason: "generateName"},
		{name: "name not DNS-1123", pod: newPod(func(p *corev1.Pod) { p.Name = "Web_1" }), fields: []string{"pod.metadata.name"}, reason: "RFC 1123"},
		{name: "templates' namespace", pod: newPod(func(p *corev1.Pod) { p.Namespace = TemplateNamespace }), fields: []string{"pod.metadata.namespace"}, reason: "reserved for the provisioner's pod VM templates"},
		{name: "namespace not a label", pod: newPod(func(p *corev1.Pod) { p.Namespace = "team.a" }), fields: []string{"pod.metadata.namespace"}, reason: "must not contain dots"},
		{name: "bad label", pod: newPod(func(p *corev1.Pod) { p.Labels = map[string]string{"app": "a b"} }), fields: []string{"pod.metadata.labels[app]"}},
		{name: "finalizers", pod: newPod(func(p *corev1.Pod) { p.Finalizers = []string{"x/y"} }), fields: []string{"pod.metadata.finalizers"}},
		{name: "unknown podvisor annotation", pod: newPod(func(p *corev1.Pod) { p.Annotations = map[string]string{"podvisor.io/netwroks": "a"} }),
			fields: []string{"pod.metadata.annotations[podvisor.io/netwroks]"}, reason: "supported: podvisor.io/networks"},
		{name: "encrypted ephemeral disk", pod: newPod(func(p *corev1.Pod) {
			p.Annotations = map[string]string{AnnotationEphemeralEncryption: EphemeralEncryptionRequired}
		})},
		{name: "encryption annotation with another value", pod: newPod(func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationEphemeralEncryption: "yes"} }),
			fields: []string{"pod.metadata.annotations[podvisor.io/ephemeral-encryption]"}, reason: `"required"`},
		{name: "no containers", pod: newPod(func(p *corev1.Pod) { p.Spec.Containers = nil }), fields: []string{"pod.spec.containers"}, reason: "at least one container"},
		{name: "bad and duplicate container names", pod: newPod(addContainer("nginx", "nginx"), addContainer("Side_Car", "nginx")),
			fields: []string{"pod.spec.containers[1].name", "pod.spec.containers[2].name"}},
		{name: "missing image", pod: newPod(addContainer("b", "")), fields: []string{"pod.spec.containers[1].image"}, reason: "Required"},
		{name: "unparseable image", pod: newPod(addContainer("b", "nginx:::1")), fields: []string{"pod.spec.containers[1].image"}, reason: "not an OCI image reference"},
		{name: "image with spaces", pod: newPod(addContainer("b", "nginx ")), fields: []string{"pod.spec.containers[1].image"}},
		{name: "relative workingDir", pod: newPod(func(p *corev1.Pod) { p.Spec.Containers[0].WorkingDir = "app" }), fields: []string{"pod.spec.containers[0].workingDir"}},
		{name: "ports", pod: newPod(addContainer("b", "nginx"), func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 0}, {ContainerPort: 80, Protocol: "HTTP"}, {ContainerPort: 8080, HostPort: 80}, {ContainerPort: 443, Name: "HTTPS_port"}}
			p.Spec.Containers[1].Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
		}), fields: []string{
			"pod.spec.containers[0].ports[0].containerPort",
			"pod.spec.containers[0].ports[1].protocol",
			"pod.spec.containers[0].ports[2].hostPort",
			"pod.spec.containers[0].ports[3].name",
			"pod.spec.containers[1].ports[0].containerPort",
		}},
		{name: "env", pod: newPod(func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: ""}, {Name: "A", Value: "1"}, {Name: "A", Value: "2"},
				{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}}}
		}), fields: []string{"pod.spec.containers[0].env[0].name", "pod.spec.containers[0].env[2].name", "pod.spec.containers[0].env[3].valueFrom"}},
		{name: "request above limit", pod: newPod(addContainer("b", "nginx"), resources(1, map[corev1.ResourceName]string{"memory": "16Gi", "cpu": "2"}, map[corev1.ResourceName]string{"memory": "8Gi", "cpu": "2"})),
			fields: []string{"pod.spec.containers[1].resources.requests.memory"}, reason: "must be less than or equal to memory limit 8Gi"},
		{name: "unsupported resource", pod: newPod(resources(0, nil, map[corev1.ResourceName]string{"nvidia.com/gpu": "1"})),
			fields: []string{"pod.spec.containers[0].resources.limits.nvidia.com/gpu"}, reason: "supported values"},
		{name: "negative request", pod: newPod(resources(0, map[corev1.ResourceName]string{"cpu": "-1"}, nil)),
			fields: []string{"pod.spec.containers[0].resources.requests.cpu"}, reason: "negative"},
		{name: "unsupported pod fields", pod: newPod(func(p *corev1.Pod) {
			p.Spec.HostNetwork = true
			p.Spec.HostPID = true
			p.Spec.HostIPC = true
			p.Spec.NodeName = "DC0_C0_H0"
		}), fields: []string{"pod.spec.nodeName", "pod.spec.hostNetwork", "pod.spec.hostPID", "pod.spec.hostIPC"},
			reason: "not supported by podvisor"},
		{name: "unsupported container fields", pod: newPod(func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.Lifecycle = &corev1.Lifecycle{}
			c.TTY = true
			c.SecurityContext = &corev1.SecurityContext{Privileged: ptr(true), Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN"}}}
		}), fields: []string{"pod.spec.containers[0].lifecycle", "pod.spec.containers[0].tty",
			"pod.spec.containers[0].securityContext.capabilities", "pod.spec.containers[0].securityContext.privileged"}},
		// What a pod VM runs: init containers, emptyDir volumes and their
		// mounts, probes the agent runs.
		{name: "init containers, emptyDir, mounts, probes", pod: newPod(func(p *corev1.Pod) {
			p.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
			p.Spec.TerminationGracePeriodSeconds = ptr(int64(5))
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}}
			p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox", Command: []string{"sh", "-c", "echo hi > /data/x"},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}}
			c := &p.Spec.Containers[0]
			c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data", ReadOnly: true}, {Name: "cache", MountPath: "/cache"}}
			c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}, PeriodSeconds: 5}
			c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(80)}}}
			c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}, FailureThreshold: 30}
		})},
		{name: "volume types a pod VM cannot have", pod: newPod(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{
				{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}},
				{Name: "claim", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}},
				{Name: "none"},
				{Name: "huge", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumHugePages}}},
				{Name: "huge"},
			}
		}), fields: []string{"pod.spec.volumes[0].hostPath", "pod.spec.volumes[1].persistentVolumeClaim", "pod.spec.volumes[2].emptyDir",
			"pod.spec.volumes[3].emptyDir.medium", "pod.spec.volumes[4].name", "pod.spec.volumes[4].emptyDir"}},
		{name: "volume mounts", pod: newPod(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "nope", MountPath: "/a"}, {Name: "data", MountPath: "rel"},
				{Name: "data", MountPath: "/d", SubPath: "x"}, {Name: "data", MountPath: "/d/"}}
		}), fields: []string{"pod.spec.containers[0].volumeMounts[0].name", "pod.spec.containers[0].volumeMounts[1].mountPath",
			"pod.spec.containers[0].volumeMounts[2].subPath", "pod.spec.containers[0].volumeMounts[3].mountPath"}},
		{name: "probes", pod: newPod(func(p *corev1.Pod) {
			c := &p.Spec.Containers[0]
			c.LivenessProbe = &corev1.Probe{}
			c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9000}}}
			c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("http"),
				HTTPHeaders: []corev1.HTTPHeader{{Name: "a", Value: "b"}}}}, PeriodSeconds: -1}
		}), fields: []string{"pod.spec.containers[0].livenessProbe", "pod.spec.containers[0].readinessProbe.grpc",
			"pod.spec.containers[0].startupProbe.httpGet.httpHeaders", "pod.spec.containers[0].startupProbe.httpGet.port",
			"pod.spec.containers[0].startupProbe.periodSeconds"}},
		{name: "init containers", pod: newPod(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{
				{Name: "nginx", Image: "busybox"},
				{Name: "probed", Image: "busybox", ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}},
				{Name: "sidecar", Image: "busybox", RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)},
				{Name: "secret", Image: "busybox", Env: []corev1.EnvVar{{Name: "S", ValueFrom: &corev1.EnvVarSource{}}}},
			}
		}), fields: []string{"pod.spec.initContainers[1].readinessProbe",
			"pod.spec.initContainers[2].restartPolicy", "pod.spec.initContainers[3].env[0].valueFrom", "pod.spec.containers[0].name"}},
		{name: "empty slices count as unset", pod: newPod(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{}
			p.Spec.Volumes = []corev1.Volume{}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{}
		})},
		{name: "policies", pod: newPod(func(p *corev1.Pod) {
			p.Spec.RestartPolicy = "Sometimes"
			p.Spec.DNSPolicy = corev1.DNSNone
			p.Spec.ServiceAccountName = "builder"
			p.Spec.SchedulerName = "volcano"
			p.Spec.Containers[0].ImagePullPolicy = "Maybe"
			p.Spec.Containers[0].TerminationMessagePath = "/tmp/msg"
		}), fields: []string{"pod.spec.restartPolicy", "pod.spec.dnsPolicy", "pod.spec.serviceAccountName", "pod.spec.schedulerName",
			"pod.spec.containers[0].terminationMessagePath", "pod.spec.containers[0].imagePullPolicy"}},
		{name: "windows", pod: newPod(func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }), fields: []string{"pod.spec.os.name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidatePod(tt.pod)
			if len(tt.fields) == 0 {
				if err != nil {
					t.Fatalf("ValidatePod: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("ValidatePod = %v, want a *ValidationError", err)
			}
			var got []string
			for _, fe := range ve.Errors {
				got = append(got, fe.Field)
			}
			if !slices.Equal(got, tt.fields) {
				t.Errorf("fields = %q, want %q\nerror: %v", got, tt.fields, err)
			}
			for _, f := range tt.fields {
				if !strings.Contains(err.Error(), f+": ") {
					t.Errorf("message does not name %s: %v", f, err)
				}
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("message %q does not contain %q", err, tt.reason)
			}
		})
	}
}

// TestValidatePodNil guards the entry point services call with whatever they
// decoded.
func TestValidatePodNil(t *testing.T) {
	if err := ValidatePod(nil); err == nil || !strings.Contains(err.Error(), "pod: Required value") {
		t.Errorf("ValidatePod(nil) = %v", err)
	}
}

// TestAllowListsKnowEveryField fails when k8s.io/api gains a field: decide
// whether pod VMs support it (add it to the allow-list and handle it) or not
// (nothing to do, it is refused), then record it here.
func TestAllowListsKnowEveryField(t *testing.T) {
	known := map[reflect.Type][]string{
		reflect.TypeOf(corev1.PodSpec{}): {"volumes", "initContainers", "containers", "ephemeralContainers", "restartPolicy",
			"terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "serviceAccountName",
			"serviceAccount", "automountServiceAccountToken", "nodeName", "hostNetwork", "hostPID", "hostIPC",
			"shareProcessNamespace", "securityContext", "imagePullSecrets", "hostname", "subdomain", "affinity",
			"schedulerName", "tolerations", "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates",
			"runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead", "topologySpreadConstraints",
			"setHostnameAsFQDN", "os", "hostUsers", "schedulingGates", "resourceClaims", "resources", "hostnameOverride",
			"schedulingGroup", "evictionResponders"},
		reflect.TypeOf(corev1.Container{}): {"name", "image", "command", "args", "workingDir", "ports", "envFrom", "env",
			"resources", "resizePolicy", "restartPolicy", "restartPolicyRules", "volumeMounts", "volumeDevices",
			"livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "terminationMessagePath",
			"terminationMessagePolicy", "imagePullPolicy", "securityContext", "stdin", "stdinOnce", "tty"},
	}
	for typ, want := range known {
		var got []string
		for i := 0; i < typ.NumField(); i++ {
			if n := jsonName(typ.Field(i)); n != "" {
				got = append(got, n)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s fields changed:\n got %q\nwant %q", typ, got, want)
		}
	}
}

func TestPodNetworks(t *testing.T) {
	tests := []struct {
		name       string
		annotation *string
		want       []string
		wantField  string // "" = valid
	}{
		{name: "absent", want: []string{"default"}},
		{name: "one", annotation: ptr("frontend"), want: []string{"frontend"}},
		{name: "trimmed, in order", annotation: ptr(" frontend , backend,storage "), want: []string{"frontend", "backend", "storage"}},
		{name: "blank", annotation: ptr("  "), want: []string{"default"}, wantField: "pod.metadata.annotations[podvisor.io/networks]"},
		{name: "duplicate", annotation: ptr("a,b,a"), want: []string{"a", "b"}, wantField: "pod.metadata.annotations[podvisor.io/networks][2]"},
		{name: "empty entry", annotation: ptr("a,,b"), want: []string{"a", "b"}, wantField: "pod.metadata.annotations[podvisor.io/networks][1]"},
		{name: "not a label", annotation: ptr("a,Back_End"), want: []string{"a", "Back_End"}, wantField: "pod.metadata.annotations[podvisor.io/networks][1]"},
		{name: "too many", annotation: ptr("a,b,c,d,e,f,g,h,i,j,k"), want: []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"},
			wantField: "pod.metadata.annotations[podvisor.io/networks]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := newPod()
			if tt.annotation != nil {
				pod.Annotations = map[string]string{AnnotationNetworks: *tt.annotation}
			}
			if got := PodNetworks(pod); !slices.Equal(got, tt.want) {
				t.Errorf("PodNetworks = %q, want %q", got, tt.want)
			}
			err := ValidatePod(pod)
			if tt.wantField == "" {
				if err != nil {
					t.Errorf("ValidatePod: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field() != tt.wantField {
				t.Errorf("ValidatePod = %v, want an error at %s", err, tt.wantField)
			}
		})
	}
}

func TestNormalizePod(t *testing.T) {
	pod := newPod(func(p *corev1.Pod) {
		p.APIVersion, p.Kind = "", ""
		p.ResourceVersion = "42"
		p.CreationTimestamp = metav1.Now()
		p.Status.Phase = corev1.PodRunning
	})
	NormalizePod(pod)
	if pod.Namespace != DefaultNamespace || pod.APIVersion != "v1" || pod.Kind != "Pod" {
		t.Errorf("identity not normalized: %q %q %q", pod.Namespace, pod.APIVersion, pod.Kind)
	}
	if pod.ResourceVersion != "" || !pod.CreationTimestamp.IsZero() || pod.Status.Phase != "" {
		t.Errorf("server-side fields kept: %q %v %q", pod.ResourceVersion, pod.CreationTimestamp, pod.Status.Phase)
	}
	if !reflect.DeepEqual(pod, func() *corev1.Pod { q := pod.DeepCopy(); NormalizePod(q); return q }()) {
		t.Errorf("NormalizePod is not idempotent")
	}
	other := newPod(func(p *corev1.Pod) { p.Namespace = "shop" })
	NormalizePod(other)
	if other.Namespace != "shop" {
		t.Errorf("namespace shop overwritten with %q", other.Namespace)
	}
}

func TestPodKey(t *testing.T) {
	if got := PodKey("", "web"); got != "default/web" {
		t.Errorf("PodKey(\"\", web) = %q", got)
	}
	ns, name, err := SplitPodKey(PodKey("shop", "web"))
	if err != nil || ns != "shop" || name != "web" {
		t.Errorf("SplitPodKey(PodKey(shop, web)) = %q %q %v", ns, name, err)
	}
	for _, bad := range []string{"web", "/web", "shop/", "a/b/c"} {
		if _, _, err := SplitPodKey(bad); err == nil {
			t.Errorf("SplitPodKey(%q) succeeded", bad)
		}
	}
}

func TestContainerImageChainIDsAndFS(t *testing.T) {
	id := func(c string) string { return "sha256:" + strings.Repeat(c, 64) }
	ok := ContainerImage{Container: "c", Image: "reg:5000/app:1", Digest: id("d"), Datastore: "ds",
		Disk: "[ds] podvisor-images/b/disk.vmdk", Chain: []string{"[ds] podvisor-images/a/disk.vmdk", "[ds] podvisor-images/b/disk.vmdk"},
		ChainIDs: []string{id("a"), id("b")}, FS: ImageDiskFS}
	for _, tc := range []struct {
		name   string
		mutate func(*ContainerImage)
		want   string
	}{
		{"valid", func(*ContainerImage) {}, ""},
		{"without the new fields", func(c *ContainerImage) { c.ChainIDs, c.FS = nil, "" }, ""},
		{"one chainID short", func(c *ContainerImage) { c.ChainIDs = c.ChainIDs[:1] }, "chainIDs"},
		{"bad chainID", func(c *ContainerImage) { c.ChainIDs[0] = "nope" }, "chainIDs[0]"},
		{"unknown fs", func(c *ContainerImage) { c.FS = "ext4" }, "fs"},
		{"image config", func(c *ContainerImage) {
			c.Config = &ImageConfig{Entrypoint: []string{"/bin/app"}, Cmd: []string{"serve"}, Env: []string{"PATH=/bin", "EMPTY="},
				User: "app:app", WorkingDir: "/srv", ExposedPorts: []string{"8080/tcp"}}
		}, ""},
		{"image env without a name", func(c *ContainerImage) { c.Config = &ImageConfig{Env: []string{"=x"}} }, "config.env[0]"},
		{"image env without =", func(c *ContainerImage) { c.Config = &ImageConfig{Env: []string{"PATH"}} }, "config.env[0]"},
		{"relative image workingDir", func(c *ContainerImage) { c.Config = &ImageConfig{WorkingDir: "srv"} }, "config.workingDir"},
		{"image config too large", func(c *ContainerImage) {
			c.Config = &ImageConfig{Cmd: make([]string, MaxImageConfigBytes+1)}
		}, "config: Too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.ChainIDs = append([]string(nil), ok.ChainIDs...)
			tc.mutate(&c)
			errs := c.validate(field.NewPath("containers").Index(0))
			if tc.want == "" && len(errs) > 0 || tc.want != "" && (len(errs) == 0 || !strings.Contains(errs.ToAggregate().Error(), tc.want)) {
				t.Fatalf("errors %v, want %q", errs, tc.want)
			}
		})
	}
}
