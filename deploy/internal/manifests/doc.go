// Package manifests builds kustomizations the way `kubectl kustomize` does and
// decodes the result strictly into Kubernetes API types.
//
// Strict means a field the API type does not have is an error, as is a field
// given twice. A typo such as `readinesProbe`, or a field indented one level
// too deep, would otherwise be dropped silently by a lenient decoder and by
// many clusters; here it fails the build of the overlay:
//
//	objs, err := manifests.Build("deploy/k8s/overlays/prod")
//	for _, o := range objs {
//		if d, ok := o.Object.(*appsv1.Deployment); ok { … }
//	}
package manifests
