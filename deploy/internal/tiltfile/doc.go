// Package tiltfile executes a Tiltfile without Tilt: the Starlark runs for
// real (go.starlark.net, with Tilt's dialect), while the Tilt builtins
// record what they were asked to do instead of building, deploying or
// running anything. The result is a Plan that a test can hold to account:
// which resources exist in which mode, which files and folders they name,
// what gets built from which Dockerfile stage and how it is live-updated.
//
//	plan, err := tiltfile.Execute("Tiltfile", tiltfile.Options{
//		Args:      []string{"--local"},            // what follows `tilt up --`
//		Kustomize: manifests.BuildYAML,            // renders kustomize(dir)
//	})
//
// The builtins take Tilt's own parameter names, so a misspelt keyword fails
// here as it would in Tilt; a builtin the package does not know is an
// undefined name. Paths resolve the way Tilt resolves them: relative to the
// directory of the file whose code is running (for a function defined in a
// loaded file, that file's directory, not the caller's). load() reads local
// files only; an ext:// (or any URL) load is an error, because it would make
// Tilt download code from the internet.
package tiltfile
