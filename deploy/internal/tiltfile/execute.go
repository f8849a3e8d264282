package tiltfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
)

// Options are the inputs Tilt would take from its command line and tools.
type Options struct {
	// Args are the Tiltfile arguments: what follows `--` in `tilt up -- …`.
	Args []string
	// Kustomize renders kustomize(dir) to YAML. A Tiltfile that calls
	// kustomize() fails when it is nil.
	Kustomize func(dir string) ([]byte, error)
	// Subcommand is config.tilt_subcommand; "up" when empty.
	Subcommand string
}

// dialect is Tilt's Starlark: top-level if/for, while, sets, recursion and
// reassigned globals are all allowed.
var dialect = &syntax.FileOptions{
	Set:             true,
	While:           true,
	TopLevelControl: true,
	GlobalReassign:  true,
	Recursion:       true,
}

// Execute runs the Tiltfile at path and returns what it asked for.
func Execute(path string, opts Options) (*Plan, error) {
	main, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if opts.Subcommand == "" {
		opts.Subcommand = "up"
	}
	r := &recorder{
		plan:  &Plan{Main: main, Config: map[string]any{}},
		opts:  opts,
		files: map[string]*loadedFile{},
	}
	r.predeclared = r.builtins()
	thread := &starlark.Thread{
		Name:  "tiltfile",
		Load:  r.load,
		Print: func(_ *starlark.Thread, msg string) { r.plan.Output = append(r.plan.Output, msg) },
	}
	if _, err := r.exec(thread, main); err != nil {
		var evalErr *starlark.EvalError
		if errors.As(err, &evalErr) {
			return r.plan, fmt.Errorf("%s", evalErr.Backtrace())
		}
		return r.plan, err
	}
	return r.plan, nil
}

type loadedFile struct {
	done    bool
	globals starlark.StringDict
	err     error
}

type recorder struct {
	plan        *Plan
	opts        Options
	predeclared starlark.StringDict
	files       map[string]*loadedFile

	flags       map[string]flagDef
	positional  string
	parseCalled bool
}

func (r *recorder) exec(thread *starlark.Thread, path string) (starlark.StringDict, error) {
	if f, ok := r.files[path]; ok {
		if !f.done {
			return nil, fmt.Errorf("circular load of %s", path)
		}
		return f.globals, f.err
	}
	f := &loadedFile{}
	r.files[path] = f
	src, err := os.ReadFile(path)
	if err != nil {
		f.done, f.err = true, err
		return nil, err
	}
	f.globals, f.err = starlark.ExecFileOptions(dialect, thread, path, src, r.predeclared)
	f.done = true
	return f.globals, f.err
}

// load implements load() statements: local files only, relative to the file
// that loads them.
func (r *recorder) load(thread *starlark.Thread, module string) (starlark.StringDict, error) {
	if strings.Contains(module, "://") {
		return nil, fmt.Errorf("load(%q): remote extensions are not allowed (Tilt would download them): vendor the helper into the repository", module)
	}
	path := absPath(thread, module)
	r.plan.Loaded = append(r.plan.Loaded, path)
	r.plan.Paths = append(r.plan.Paths, PathRef{Builtin: "load", Arg: "module", Path: path})
	return r.exec(thread, path)
}

// execPath is the file whose code is running: the innermost Starlark frame.
// Tilt resolves relative paths against its directory.
func execPath(thread *starlark.Thread) string {
	for i := 0; i < thread.CallStackDepth(); i++ {
		if name := thread.CallFrame(i).Pos.Filename(); name != "<builtin>" {
			return name
		}
	}
	return ""
}

func absPath(thread *starlark.Thread, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(filepath.Dir(execPath(thread)), p)
}

func (r *recorder) path(thread *starlark.Thread, builtin, arg, p string) string {
	abs := absPath(thread, p)
	r.plan.Paths = append(r.plan.Paths, PathRef{Builtin: builtin, Arg: arg, Path: abs})
	return abs
}

func (r *recorder) builtins() starlark.StringDict {
	b := func(name string, fn func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)) *starlark.Builtin {
		return starlark.NewBuiltin(name, fn)
	}
	mainDir := filepath.Dir(r.plan.Main)
	return starlark.StringDict{
		"k8s_yaml":            b("k8s_yaml", r.k8sYAML),
		"kustomize":           b("kustomize", r.kustomize),
		"docker_build":        b("docker_build", r.dockerBuild),
		"sync":                b("sync", r.sync),
		"run":                 b("run", r.run),
		"fall_back_on":        b("fall_back_on", r.fallBackOn),
		"restart_container":   b("restart_container", r.restartContainer),
		"local_resource":      b("local_resource", r.localResource),
		"k8s_resource":        b("k8s_resource", r.k8sResource),
		"port_forward":        b("port_forward", r.portForward),
		"link":                b("link", r.link),
		"probe":               b("probe", r.probe),
		"exec_action":         b("exec_action", r.execAction),
		"http_get_action":     b("http_get_action", r.httpGetAction),
		"tcp_socket_action":   b("tcp_socket_action", r.tcpSocketAction),
		"version_settings":    b("version_settings", r.versionSettings),
		"update_settings":     b("update_settings", r.updateSettings),
		"allow_k8s_contexts":  b("allow_k8s_contexts", r.allowK8sContexts),
		"default_registry":    b("default_registry", r.defaultRegistry),
		"read_json":           b("read_json", r.readJSON),
		"blob":                b("blob", r.blob),
		"read_file":           b("read_file", r.readFile),
		"watch_file":          b("watch_file", r.watchFile),
		"fail":                b("fail", fail),
		"TRIGGER_MODE_AUTO":   triggerValue(TriggerAuto),
		"TRIGGER_MODE_MANUAL": triggerValue(TriggerManual),
		"config": &starlarkstruct.Module{Name: "config", Members: starlark.StringDict{
			"define_bool":        b("config.define_bool", r.defineSetting("bool")),
			"define_string":      b("config.define_string", r.defineSetting("string")),
			"define_string_list": b("config.define_string_list", r.defineSetting("string_list")),
			"parse":              b("config.parse", r.parse),
			"main_path":          starlark.String(r.plan.Main),
			"main_dir":           starlark.String(mainDir),
			"tilt_subcommand":    starlark.String(r.opts.Subcommand),
		}},
		"os": &starlarkstruct.Module{Name: "os", Members: starlark.StringDict{
			"getcwd": b("os.getcwd", osGetcwd),
			"getenv": b("os.getenv", osGetenv),
			"name":   starlark.String("posix"),
			"path": &starlarkstruct.Module{Name: "os.path", Members: starlark.StringDict{
				"join":     b("os.path.join", pathJoin),
				"dirname":  b("os.path.dirname", pathFunc(filepath.Dir)),
				"basename": b("os.path.basename", pathFunc(filepath.Base)),
				"abspath":  b("os.path.abspath", pathAbs),
				"exists":   b("os.path.exists", pathExists),
			}},
		}},
	}
}

func fail(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var msg string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "msg", &msg); err != nil {
		return nil, err
	}
	return nil, errors.New(msg)
}

func osGetcwd(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	return starlark.String(filepath.Dir(execPath(thread))), nil
}

func osGetenv(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var key string
	var def starlark.Value = starlark.None
	if err := starlark.UnpackArgs(b.Name(), args, kw, "key", &key, "default?", &def); err != nil {
		return nil, err
	}
	if v, ok := os.LookupEnv(key); ok {
		return starlark.String(v), nil
	}
	return def, nil
}

func pathJoin(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if len(kw) > 0 {
		return nil, fmt.Errorf("%s: unexpected keyword arguments", b.Name())
	}
	parts := make([]string, len(args))
	for i, a := range args {
		s, ok := starlark.AsString(a)
		if !ok {
			return nil, fmt.Errorf("%s: argument %d: got %s, want string", b.Name(), i+1, a.Type())
		}
		parts[i] = s
	}
	return starlark.String(filepath.Join(parts...)), nil
}

func pathFunc(f func(string) string) func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
	return func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		var p string
		if err := starlark.UnpackArgs(b.Name(), args, kw, "path", &p); err != nil {
			return nil, err
		}
		return starlark.String(f(p)), nil
	}
}

func pathAbs(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "path", &p); err != nil {
		return nil, err
	}
	return starlark.String(absPath(thread, p)), nil
}

func pathExists(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "path", &p); err != nil {
		return nil, err
	}
	_, err := os.Stat(absPath(thread, p))
	return starlark.Bool(err == nil), nil
}
