package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Object is one decoded manifest.
type Object struct {
	// Object is the typed API object (*appsv1.Deployment, *corev1.Service, …).
	runtime.Object
	Kind      string
	Name      string
	Namespace string
	// YAML is the document the object was decoded from.
	YAML []byte
}

// String names the object the way error messages should: Kind/namespace/name.
func (o Object) String() string {
	if o.Namespace == "" {
		return o.Kind + "/" + o.Name
	}
	return o.Kind + "/" + o.Namespace + "/" + o.Name
}

// strict rejects unknown and duplicate fields; it knows every type of the
// client-go scheme (the built-in API groups) and the Prometheus operator's
// monitoring.coreos.com/v1 (the base's ServiceMonitor).
var strict = serializer.NewCodecFactory(strictScheme(), serializer.EnableStrict).UniversalDeserializer()

func strictScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(scheme.AddToScheme(s))
	utilruntime.Must(monitoringv1.AddToScheme(s))
	return s
}

// BuildYAML runs kustomize on dir with kubectl's defaults (files only from
// inside the kustomization root, no plugins, legacy resource order) and
// returns the multi-document YAML.
func BuildYAML(dir string) ([]byte, error) {
	opts := krusty.MakeDefaultOptions()
	opts.Reorder = krusty.ReorderOptionLegacy
	resources, err := krusty.MakeKustomizer(opts).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	out, err := resources.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return out, nil
}

// Build runs kustomize on dir and decodes every resulting object strictly.
func Build(dir string) ([]Object, error) {
	out, err := BuildYAML(dir)
	if err != nil {
		return nil, err
	}
	objs, err := Decode(out)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	return objs, nil
}

// Decode decodes a stream of YAML documents strictly. Every document must be
// a complete object of a known kind; all problems are reported together.
func Decode(data []byte) ([]Object, error) {
	reader := utilyaml.NewYAMLReader(bufioReader(data))
	var (
		objs []Object
		errs []error
	)
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, err := DecodeOne(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", i, err))
			continue
		}
		objs = append(objs, obj)
	}
	return objs, errors.Join(errs...)
}

// DecodeOne decodes a single YAML document strictly.
func DecodeOne(doc []byte) (Object, error) {
	// The identity first, so that an error can say which object is wrong.
	var meta struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return Object{}, fmt.Errorf("not a YAML object: %w", err)
	}
	id := meta.Kind + "/" + meta.Metadata.Name
	obj, _, err := strict.Decode(doc, nil, nil)
	if err != nil {
		return Object{}, fmt.Errorf("%s: %w", id, err)
	}
	return Object{
		Object:    obj,
		Kind:      meta.Kind,
		Name:      meta.Metadata.Name,
		Namespace: meta.Metadata.Namespace,
		YAML:      doc,
	}, nil
}
func bufioReader(data []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(data)) }

// stripComments drops comment-only lines, so that a document made only of
// comments (a file header before the first ---) counts as empty.
func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] == '#' {
			continue
		}
		out = append(out, line)
	}
	return bytes.Join(out, []byte("\n"))
}
