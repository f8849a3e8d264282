package tiltfile

// Plan is what a Tiltfile asked Tilt to do, in call order.
type Plan struct {
	// Main is the absolute path of the executed Tiltfile.
	Main string
	// Loaded lists the absolute paths of the files load() read.
	Loaded []string
	// Paths lists every local path an argument named, resolved.
	Paths []PathRef
	// Kustomized lists the directories given to kustomize().
	Kustomized []string
	// YAML holds the documents given to k8s_yaml: the text of blobs and of
	// the files named by path.
	YAML           []string
	Images         []Image
	LocalResources []LocalResource
	K8sResources   []K8sResource
	// Config is what config.parse() returned: the settings given on the
	// command line, by name.
	Config map[string]any
	// VersionConstraint is version_settings(constraint=…).
	VersionConstraint string
	// AllowK8sContexts collects allow_k8s_contexts() arguments.
	AllowK8sContexts []string
	// DefaultRegistry is default_registry(host).
	DefaultRegistry string
	// Output collects print() lines.
	Output []string
}

// PathRef is a local path named by an argument of a builtin.
type PathRef struct {
	Builtin string // e.g. "local_resource"
	Arg     string // e.g. "deps"
	Path    string // absolute
}

// Image is a docker_build call.
type Image struct {
	Ref        string
	Context    string // absolute
	Dockerfile string // absolute; "" with dockerfile_contents
	Target     string
	Only       []string // as given, relative to Context
	Ignore     []string
	BuildArgs  map[string]string
	LiveUpdate []Step
}

// Step is one live_update step.
type Step struct {
	Kind    string // sync, run, fall_back_on, restart_container
	Local   string // sync: absolute local path
	Remote  string // sync: path in the container
	Cmd     string // run
	Trigger []string
	Files   []string // fall_back_on
}

// TriggerMode is TRIGGER_MODE_AUTO or TRIGGER_MODE_MANUAL.
type TriggerMode int

const (
	TriggerAuto TriggerMode = iota
	TriggerManual
)

// LocalResource is a local_resource call.
type LocalResource struct {
	Name          string
	Cmd           string // argv lists are joined with spaces
	ServeCmd      string
	Dir           string // absolute; the Tiltfile's directory when not given
	ServeDir      string
	Deps          []string // absolute
	ResourceDeps  []string
	Ignore        []string
	Labels        []string
	Env           map[string]string
	ServeEnv      map[string]string
	TriggerMode   TriggerMode
	AutoInit      bool
	AllowParallel bool
	Readiness     *Probe
	Links         []Link
}

// K8sResource is a k8s_resource call.
type K8sResource struct {
	Workload     string
	NewName      string
	Labels       []string
	ResourceDeps []string
	Objects      []string
	PortForwards []PortForward
	Links        []Link
	TriggerMode  TriggerMode
	AutoInit     bool
}

// PortForward is one port forward of a k8s_resource.
type PortForward struct {
	Local     int
	Container int // equals Local when not given
	Name      string
	LinkPath  string
	Host      string
}

// Link is a link() or a URL string in links=.
type Link struct{ URL, Name string }

// Probe is a readiness probe (probe()).
type Probe struct {
	InitialDelaySecs, TimeoutSecs, PeriodSecs, SuccessThreshold, FailureThreshold int
	Exec                                                                          []string
	HTTPGet                                                                       *HTTPGet
	TCPSocket                                                                     *TCPSocket
}

// HTTPGet is http_get_action().
type HTTPGet struct {
	Port               int
	Host, Scheme, Path string
}

// TCPSocket is tcp_socket_action().
type TCPSocket struct {
	Port int
	Host string
}
