package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Object is one document of a manifest stream: exactly one of Pod, Network
// and Migration is set, as Kind says.
type Object struct {
	// Document is the object's position in the stream, 1 for the first
	// non-empty document.
	Document int
	// Kind is Pod, Network, Migration, VirtualMachine,
	// VirtualMachineClass or VirtualMachineImage.
	Kind string
	// Pod is set for Kind Pod (as written: not normalized).
	Pod *corev1.Pod
	// Network is set for Kind Network.
	Network *Network
	// Migration is set for Kind Migration.
	Migration *Migration
	// GuestCluster is set for Kind GuestCluster.
	GuestCluster *GuestCluster
	// NetworkService is set for Kind NetworkService.
	NetworkService *NetworkService
	// VM, VMClass and VMImage are set for the native VM kinds.
	VM      *VirtualMachine
	VMClass *VirtualMachineClass
	VMImage *VirtualMachineImage
}

// Name is the object's metadata.name.
func (o Object) Name() string {
	switch {
	case o.Pod != nil:
		return o.Pod.Name
	case o.Network != nil:
		return o.Network.Metadata.Name
	case o.GuestCluster != nil:
		return o.GuestCluster.Metadata.Name
	case o.Migration != nil:
		return o.Migration.Metadata.Name
	case o.NetworkService != nil:
		return o.NetworkService.Metadata.Name
	case o.VM != nil:
		return o.VM.Metadata.Name
	case o.VMClass != nil:
		return o.VMClass.Metadata.Name
	case o.VMImage != nil:
		return o.VMImage.Metadata.Name
	}
	return ""
}

// DocumentError is a problem with one document of a manifest stream.
type DocumentError struct {
	// Document is the 1-based position of the document (empty documents not
	// counted).
	Document int
	// Kind and Name of the object, when they could be read.
	Kind, Name string
	// Err is the problem; a *ValidationError or *DecodeError names the field.
	Err error
}

func (e *DocumentError) Error() string {
	where := fmt.Sprintf("document %d", e.Document)
	switch {
	case e.Kind != "" && e.Name != "":
		where += fmt.Sprintf(" (%s %s)", e.Kind, e.Name)
	case e.Kind != "":
		where += fmt.Sprintf(" (%s)", e.Kind)
	}
	return where + ": " + e.Err.Error()
}

func (e *DocumentError) Unwrap() error { return e.Err }

// DecodeObjects reads a multi-document YAML (or JSON) stream such as the file
// of "podvisor apply -f" and returns its objects in order: Kubernetes v1 Pods
// and podvisor.io/v1alpha1 Networks and Migrations. Decoding is strict
// (unknown or duplicate fields are errors) and every object is validated;
// field paths in errors start at the document root (spec.containers[0].image).
//
// It is all or nothing: if any document is wrong, no objects are returned and
// the error (an errors.Join of *DocumentError) lists every wrong document.
func DecodeObjects(r io.Reader) ([]Object, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var (
		objs []Object
		errs []error
		n    int
	)
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read manifest after document %d: %w", n, err)
		}
		j, err := DocumentJSON(doc)
		if err == nil && isEmptyDocument(j) {
			continue
		}
		n++
		if err != nil {
			errs = append(errs, &DocumentError{Document: n, Err: fmt.Errorf("invalid YAML: %w", err)})
			continue
		}
		obj, err := decodeObject(j)
		if err != nil {
			de := &DocumentError{Document: n, Err: err}
			de.Kind, de.Name = peekKindName(j)
			errs = append(errs, de)
			continue
		}
		obj.Document = n
		objs = append(objs, obj)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return objs, nil
}

func isEmptyDocument(j []byte) bool {
	j = bytes.TrimSpace(j)
	return len(j) == 0 || bytes.Equal(j, []byte("null"))
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// peekKindName reads what it can: a field of the wrong type (name: 123)
// is left empty.
func peekKindName(j []byte) (kind, name string) {
	var tm struct {
		typeMeta
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(j, &tm)
	return tm.Kind, tm.Metadata.Name
}

// supportedObjects is how the error for an unknown kind says what is known.
const supportedObjects = "want v1 Pod or podvisor.io/v1alpha1 Network, Migration, NetworkService, VirtualMachine, VirtualMachineClass, VirtualMachineImage or GuestCluster"

func decodeObject(j []byte) (Object, error) {
	var tm typeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return Object{}, decodeError(j, err) // apiVersion or kind is not a string
		}
		return Object{}, &DecodeError{Err: errors.New("a document must be an object with apiVersion and kind")}
	}
	var errs field.ErrorList
	if tm.APIVersion == "" {
		errs = append(errs, field.Required(field.NewPath("apiVersion"), supportedObjects))
	}
	if tm.Kind == "" {
		errs = append(errs, field.Required(field.NewPath("kind"), supportedObjects))
	}
	if len(errs) > 0 {
		return Object{}, asError(errs)
	}
	switch {
	case tm.APIVersion == "v1" && tm.Kind == KindPod:
		pod := &corev1.Pod{}
		strict, err := decodeStrict(j, pod)
		if err != nil {
			return Object{}, err
		}
		errs = append(strict, validatePod(pod, nil)...)
		// The pod travels inside a PodRequested event, which is capped.
		if len(j) > MaxEventSize-1024 {
			errs = append(errs, &field.Error{Type: field.ErrorTypeTooLong, Field: "<document>", BadValue: field.OmitValueType{},
				Detail: fmt.Sprintf("pod manifest is %d bytes as JSON; a pod must fit in one %d-byte event", len(j), MaxEventSize)})
		}
		return Object{Kind: KindPod, Pod: pod}, asError(errs)
	case tm.APIVersion == APIVersion && tm.Kind == KindNetwork:
		n := &Network{}
		strict, err := decodeStrict(j, n)
		if err != nil {
			return Object{}, err
		}
		return Object{Kind: KindNetwork, Network: n}, asError(append(strict, n.validate(nil)...))
	case tm.APIVersion == APIVersion && tm.Kind == KindMigration:
		m := &Migration{}
		strict, err := decodeStrict(j, m)
		if err != nil {
			return Object{}, err
		}
		return Object{Kind: KindMigration, Migration: m}, asError(append(strict, m.validate(nil)...))
	case tm.APIVersion == APIVersion && tm.Kind == KindGuestCluster:
		g := &GuestCluster{}
		strict, err := decodeStrict(j, g)
		if err != nil {
			return Object{}, err
		}
		return Object{Kind: KindGuestCluster, GuestCluster: g}, asError(append(strict, g.validate(nil)...))
	case tm.APIVersion == APIVersion && tm.Kind == KindNetworkService:
		s := &NetworkService{}
		strict, err := decodeStrict(j, s)
		if err != nil {
			return Object{}, err
		}
		return Object{Kind: KindNetworkService, NetworkService: s}, asError(append(strict, s.validate(nil)...))
	case tm.APIVersion == APIVersion && tm.Kind == KindVirtualMachine:
		v := &VirtualMachine{}
		strict, err := decodeStrict(j, v)
		if err != nil {
			return Object{}, err
		}
		// A VM printed by `get vm -o yaml` can be applied again: its status
		// is what was observed, not part of the declaration.
		v.Status = nil
		errs = append(strict, v.validate(nil)...)
		if len(j) > MaxEventSize-1024 {
			errs = append(errs, &field.Error{Type: field.ErrorTypeTooLong, Field: "<document>", BadValue: field.OmitValueType{},
				Detail: fmt.Sprintf("VM manifest is %d bytes as JSON; a VM must fit in one %d-byte event", len(j), MaxEventSize)})
		}
		return Object{Kind: KindVirtualMachine, VM: v}, asError(errs)
	case tm.APIVersion == APIVersion && tm.Kind == KindVirtualMachineClass:
		c := &VirtualMachineClass{}
		strict, err := decodeStrict(j, c)
		if err != nil {
			return Object{}, err
		}
		return Object{Kind: KindVirtualMachineClass, VMClass: c}, asError(append(strict, c.validate(nil)...))
	case tm.APIVersion == APIVersion && tm.Kind == KindVirtualMachineImage:
		m := &VirtualMachineImage{}
		strict, err := decodeStrict(j, m)
		if err != nil {
			return Object{}, err
		}
		return Object{Kind: KindVirtualMachineImage, VMImage: m}, asError(append(strict, m.validate(nil)...))
	}
	return Object{}, &DecodeError{Field: "kind", Err: fmt.Errorf("%s %q is not supported; %s", tm.APIVersion, tm.Kind, supportedObjects)}
}
