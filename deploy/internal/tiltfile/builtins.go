package tiltfile

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	starlarkjson "go.starlark.net/lib/json"
	"go.starlark.net/starlark"
)

type builtinFunc = func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)

// --- Kubernetes YAML -----------------------------------------------------------

func (r *recorder) k8sYAML(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var yaml starlark.Value
	var allowDuplicates bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "yaml", &yaml, "allow_duplicates?", &allowDuplicates); err != nil {
		return nil, err
	}
	err := each(yaml, func(v starlark.Value) error {
		switch v := v.(type) {
		case Blob:
			r.plan.YAML = append(r.plan.YAML, string(v))
		case starlark.String:
			data, err := os.ReadFile(r.path(thread, b.Name(), "yaml", string(v)))
			if err != nil {
				return fmt.Errorf("%s: %w", b.Name(), err)
			}
			r.plan.YAML = append(r.plan.YAML, string(data))
		default:
			return fmt.Errorf("%s: yaml: got %s, want blob, path or a list of them", b.Name(), v.Type())
		}
		return nil
	})
	return starlark.None, err
}

func (r *recorder) kustomize(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var dir, bin string
	var flags starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "paths", &dir, "kustomize_bin?", &bin, "flags?", &flags); err != nil {
		return nil, err
	}
	abs := r.path(thread, b.Name(), "paths", dir)
	r.plan.Kustomized = append(r.plan.Kustomized, abs)
	if r.opts.Kustomize == nil {
		return nil, fmt.Errorf("%s(%q): no kustomize renderer in tiltfile.Options", b.Name(), dir)
	}
	out, err := r.opts.Kustomize(abs)
	if err != nil {
		return nil, fmt.Errorf("%s(%q): %w", b.Name(), dir, err)
	}
	return Blob(out), nil
}

func (r *recorder) blob(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var s string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "input", &s); err != nil {
		return nil, err
	}
	return Blob(s), nil
}

func (r *recorder) readFile(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	var def starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "file_path", &p, "default?", &def); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(r.path(thread, b.Name(), "file_path", p))
	if err != nil {
		if def != nil && os.IsNotExist(err) {
			return def, nil
		}
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	return Blob(data), nil
}

func (r *recorder) watchFile(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "file_path", &p); err != nil {
		return nil, err
	}
	r.path(thread, b.Name(), "file_path", p)
	return starlark.None, nil
}

// --- images ------------------------------------------------------------------

func (r *recorder) dockerBuild(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var (
		ref, context, dockerfile, target                     string
		buildArgs, dockerfileContents, cache, liveUpdate     starlark.Value
		ignore, only, entrypoint, containerArgs, ssh, secret starlark.Value
		network, extraTag, cacheFrom, platform, extraHosts   starlark.Value
		matchInEnvVars, pull                                 bool
	)
	if err := starlark.UnpackArgs(b.Name(), args, kw,
		"ref", &ref, "context", &context, "build_args?", &buildArgs, "dockerfile?", &dockerfile,
		"dockerfile_contents?", &dockerfileContents, "cache?", &cache, "live_update?", &liveUpdate,
		"match_in_env_vars?", &matchInEnvVars, "ignore?", &ignore, "only?", &only,
		"entrypoint?", &entrypoint, "container_args?", &containerArgs, "target?", &target,
		"ssh?", &ssh, "secret?", &secret, "network?", &network, "extra_tag?", &extraTag,
		"cache_from?", &cacheFrom, "pull?", &pull, "platform?", &platform, "extra_hosts?", &extraHosts,
	); err != nil {
		return nil, err
	}
	img := Image{Ref: ref, Target: target, Context: r.path(thread, b.Name(), "context", context)}
	switch {
	case dockerfile != "":
		img.Dockerfile = r.path(thread, b.Name(), "dockerfile", dockerfile)
	case dockerfileContents == nil || dockerfileContents == starlark.None:
		// Tilt's default: the Dockerfile at the root of the context.
		img.Dockerfile = r.path(thread, b.Name(), "dockerfile", context+"/Dockerfile")
	}
	var err error
	if img.Only, err = stringList(b.Name(), "only", only); err != nil {
		return nil, err
	}
	for _, o := range img.Only {
		r.plan.Paths = append(r.plan.Paths, PathRef{Builtin: b.Name(), Arg: "only", Path: joinUnder(img.Context, o)})
	}
	if img.Ignore, err = stringList(b.Name(), "ignore", ignore); err != nil {
		return nil, err
	}
	if img.BuildArgs, err = stringMap(b.Name(), "build_args", buildArgs); err != nil {
		return nil, err
	}
	err = each(liveUpdate, func(v starlark.Value) error {
		s, ok := v.(value[Step])
		if !ok {
			return fmt.Errorf("%s: live_update: got %s, want sync(), run(), fall_back_on() or restart_container()", b.Name(), v.Type())
		}
		img.LiveUpdate = append(img.LiveUpdate, s.v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.plan.Images = append(r.plan.Images, img)
	return starlark.None, nil
}

func joinUnder(dir, p string) string {
	if strings.HasPrefix(p, "/") {
		return p
	}
	return strings.TrimSuffix(dir, "/") + "/" + strings.TrimPrefix(p, "./")
}

func (r *recorder) sync(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var local, remote string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "local_path", &local, "remote_path", &remote); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(remote, "/") {
		return nil, fmt.Errorf("%s: remote_path %q is not absolute", b.Name(), remote)
	}
	return value[Step]{"live_update_sync_step", Step{Kind: "sync", Local: r.path(thread, b.Name(), "local_path", local), Remote: remote}}, nil
}

func (r *recorder) run(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var cmd, trigger starlark.Value
	var echoOff bool
	if err := starlark.UnpackArgs(b.Name(), args, kw, "cmd", &cmd, "trigger?", &trigger, "echo_off?", &echoOff); err != nil {
		return nil, err
	}
	c, err := command(b.Name(), "cmd", cmd)
	if err != nil {
		return nil, err
	}
	triggers, err := stringList(b.Name(), "trigger", trigger)
	if err != nil {
		return nil, err
	}
	return value[Step]{"live_update_run_step", Step{Kind: "run", Cmd: c, Trigger: triggers}}, nil
}

func (r *recorder) fallBackOn(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var files starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "files", &files); err != nil {
		return nil, err
	}
	list, err := stringList(b.Name(), "files", files)
	if err != nil {
		return nil, err
	}
	step := Step{Kind: "fall_back_on"}
	for _, f := range list {
		step.Files = append(step.Files, r.path(thread, b.Name(), "files", f))
	}
	return value[Step]{"live_update_fall_back_on_step", step}, nil
}

func (r *recorder) restartContainer(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	return value[Step]{"live_update_restart_container_step", Step{Kind: "restart_container"}}, nil
}

// --- resources ---------------------------------------------------------------

func (r *recorder) localResource(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var (
		name                                          string
		cmd, deps, triggerModeV, resourceDeps, ignore starlark.Value
		serveCmd, cmdBat, serveCmdBat, linksV, tags   starlark.Value
		env, serveEnv, readiness, dir, serveDir       starlark.Value
		labels, stdinMode, serveStdinMode             starlark.Value
		allowParallel                                 bool
		autoInit                                      = true
	)
	if err := starlark.UnpackArgs(b.Name(), args, kw,
		"name", &name, "cmd?", &cmd, "deps?", &deps, "trigger_mode?", &triggerModeV,
		"resource_deps?", &resourceDeps, "ignore?", &ignore, "auto_init?", &autoInit,
		"serve_cmd?", &serveCmd, "cmd_bat?", &cmdBat, "serve_cmd_bat?", &serveCmdBat,
		"allow_parallel?", &allowParallel, "links?", &linksV, "tags?", &tags, "env?", &env,
		"serve_env?", &serveEnv, "readiness_probe?", &readiness, "dir?", &dir,
		"serve_dir?", &serveDir, "labels?", &labels, "stdin_mode?", &stdinMode,
		"serve_stdin_mode?", &serveStdinMode,
	); err != nil {
		return nil, err
	}
	fn := fmt.Sprintf("%s(%q)", b.Name(), name)
	lr := LocalResource{Name: name, AutoInit: autoInit, AllowParallel: allowParallel}
	var err error
	if lr.Cmd, err = command(fn, "cmd", cmd); err != nil {
		return nil, err
	}
	if lr.ServeCmd, err = command(fn, "serve_cmd", serveCmd); err != nil {
		return nil, err
	}
	if lr.Cmd == "" && lr.ServeCmd == "" {
		return nil, fmt.Errorf("%s: needs a cmd and/or a serve_cmd", fn)
	}
	if dir != nil && lr.Cmd == "" {
		return nil, fmt.Errorf("%s: dir applies to cmd, which is empty (serve_dir is for serve_cmd)", fn)
	}
	lr.Dir = r.optionalDir(thread, "dir", dir)
	lr.ServeDir = r.optionalDir(thread, "serve_dir", serveDir)
	depList, err := stringList(fn, "deps", deps)
	if err != nil {
		return nil, err
	}
	for _, d := range depList {
		lr.Deps = append(lr.Deps, r.path(thread, b.Name(), "deps", d))
	}
	if lr.ResourceDeps, err = stringList(fn, "resource_deps", resourceDeps); err != nil {
		return nil, err
	}
	if lr.Ignore, err = stringList(fn, "ignore", ignore); err != nil {
		return nil, err
	}
	if lr.Labels, err = stringList(fn, "labels", labels); err != nil {
		return nil, err
	}
	if lr.Env, err = stringMap(fn, "env", env); err != nil {
		return nil, err
	}
	if lr.ServeEnv, err = stringMap(fn, "serve_env", serveEnv); err != nil {
		return nil, err
	}
	if lr.TriggerMode, err = triggerMode(fn, "trigger_mode", triggerModeV); err != nil {
		return nil, err
	}
	if lr.Links, err = links(fn, linksV); err != nil {
		return nil, err
	}
	if readiness != nil && readiness != starlark.None {
		p, ok := readiness.(value[Probe])
		if !ok {
			return nil, fmt.Errorf("%s: readiness_probe: got %s, want probe()", fn, readiness.Type())
		}
		if lr.ServeCmd == "" {
			return nil, fmt.Errorf("%s: a readiness_probe needs a serve_cmd", fn)
		}
		lr.Readiness = &p.v
	}
	for _, existing := range r.plan.LocalResources {
		if existing.Name == name {
			return nil, fmt.Errorf("%s: a local_resource of that name already exists", fn)
		}
	}
	r.plan.LocalResources = append(r.plan.LocalResources, lr)
	return starlark.None, nil
}

// optionalDir resolves dir= / serve_dir=; Tilt's default is the directory of
// the running file.
func (r *recorder) optionalDir(thread *starlark.Thread, arg string, v starlark.Value) string {
	s, ok := starlark.AsString(v)
	if v == nil || v == starlark.None || !ok {
		return absPath(thread, ".")
	}
	return r.path(thread, "local_resource", arg, s)
}

func (r *recorder) k8sResource(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var (
		workload, newName                                   string
		portForwards, extraSelectors, triggerModeV, resDeps starlark.Value
		objects, podReadiness, linksV, labels, discovery    starlark.Value
		autoInit                                            = true
	)
	if err := starlark.UnpackArgs(b.Name(), args, kw,
		"workload?", &workload, "new_name?", &newName, "port_forwards?", &portForwards,
		"extra_pod_selectors?", &extraSelectors, "trigger_mode?", &triggerModeV,
		"resource_deps?", &resDeps, "objects?", &objects, "auto_init?", &autoInit,
		"pod_readiness?", &podReadiness, "links?", &linksV, "labels?", &labels,
		"discovery_strategy?", &discovery,
	); err != nil {
		return nil, err
	}
	fn := fmt.Sprintf("%s(%q)", b.Name(), workload)
	if workload == "" && newName == "" {
		return nil, fmt.Errorf("%s: needs a workload or a new_name", b.Name())
	}
	res := K8sResource{Workload: workload, NewName: newName, AutoInit: autoInit}
	var err error
	if res.Labels, err = stringList(fn, "labels", labels); err != nil {
		return nil, err
	}
	if res.ResourceDeps, err = stringList(fn, "resource_deps", resDeps); err != nil {
		return nil, err
	}
	if res.Objects, err = stringList(fn, "objects", objects); err != nil {
		return nil, err
	}
	if res.TriggerMode, err = triggerMode(fn, "trigger_mode", triggerModeV); err != nil {
		return nil, err
	}
	if res.Links, err = links(fn, linksV); err != nil {
		return nil, err
	}
	err = each(portForwards, func(v starlark.Value) error {
		pf, err := portForward(fn, v)
		res.PortForwards = append(res.PortForwards, pf)
		return err
	})
	if err != nil {
		return nil, err
	}
	r.plan.K8sResources = append(r.plan.K8sResources, res)
	return starlark.None, nil
}

// portForward accepts Tilt's forms: 8000, "8000", "8000:80", "host:8000:80"
// and port_forward().
func portForward(fn string, v starlark.Value) (PortForward, error) {
	switch v := v.(type) {
	case value[PortForward]:
		return v.v, nil
	case starlark.Int:
		n, ok := v.Int64()
		if !ok {
			return PortForward{}, fmt.Errorf("%s: port_forwards: %s out of range", fn, v)
		}
		return PortForward{Local: int(n), Container: int(n)}, nil
	case starlark.String:
		parts := strings.Split(string(v), ":")
		pf := PortForward{}
		if len(parts) == 3 {
			pf.Host, parts = parts[0], parts[1:]
		}
		nums := make([]int, len(parts))
		for i, p := range parts {
			n, err := strconv.Atoi(p)
			if err != nil || len(parts) > 2 {
				return PortForward{}, fmt.Errorf("%s: port_forwards: %q: want PORT, LOCAL:CONTAINER or HOST:LOCAL:CONTAINER", fn, string(v))
			}
			nums[i] = n
		}
		pf.Local, pf.Container = nums[0], nums[len(nums)-1]
		return pf, nil
	}
	return PortForward{}, fmt.Errorf("%s: port_forwards: got %s, want int, string or port_forward()", fn, v.Type())
}

func (r *recorder) portForward(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var local int
	var container starlark.Value
	var name, linkPath, host string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "local_port", &local, "container_port?", &container,
		"name?", &name, "link_path?", &linkPath, "host?", &host); err != nil {
		return nil, err
	}
	pf := PortForward{Local: local, Container: local, Name: name, LinkPath: linkPath, Host: host}
	if container != nil && container != starlark.None {
		n, err := starlark.AsInt32(container)
		if err != nil {
			return nil, fmt.Errorf("%s: container_port: %w", b.Name(), err)
		}
		pf.Container = n
	}
	return value[PortForward]{"port_forward", pf}, nil
}

func (r *recorder) link(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var l Link
	if err := starlark.UnpackArgs(b.Name(), args, kw, "url", &l.URL, "name?", &l.Name); err != nil {
		return nil, err
	}
	return value[Link]{"link", l}, nil
}

// --- probes ------------------------------------------------------------------

func (r *recorder) probe(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p Probe
	var exec, httpGet, tcpSocket starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw,
		"initial_delay_secs?", &p.InitialDelaySecs, "timeout_secs?", &p.TimeoutSecs,
		"period_secs?", &p.PeriodSecs, "success_threshold?", &p.SuccessThreshold,
		"failure_threshold?", &p.FailureThreshold, "exec?", &exec, "http_get?", &httpGet,
		"tcp_socket?", &tcpSocket); err != nil {
		return nil, err
	}
	actions := 0
	if v, ok := exec.(value[[]string]); ok {
		p.Exec, actions = v.v, actions+1
	}
	if v, ok := httpGet.(value[HTTPGet]); ok {
		p.HTTPGet, actions = &v.v, actions+1
	}
	if v, ok := tcpSocket.(value[TCPSocket]); ok {
		p.TCPSocket, actions = &v.v, actions+1
	}
	if actions != 1 {
		return nil, fmt.Errorf("%s: exactly one of exec, http_get, tcp_socket must be given (with its *_action())", b.Name())
	}
	return value[Probe]{"probe", p}, nil
}

func (r *recorder) execAction(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var cmd starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "command", &cmd); err != nil {
		return nil, err
	}
	argv, err := stringList(b.Name(), "command", cmd)
	if err != nil {
		return nil, err
	}
	if _, isString := cmd.(starlark.String); isString || len(argv) == 0 {
		return nil, fmt.Errorf("%s: command must be a non-empty list (argv), not a shell string", b.Name())
	}
	return value[[]string]{"exec_action", argv}, nil
}

func (r *recorder) httpGetAction(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var a HTTPGet
	if err := starlark.UnpackArgs(b.Name(), args, kw, "port", &a.Port, "host?", &a.Host, "scheme?", &a.Scheme, "path?", &a.Path); err != nil {
		return nil, err
	}
	return value[HTTPGet]{"http_get_action", a}, nil
}

func (r *recorder) tcpSocketAction(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var a TCPSocket
	if err := starlark.UnpackArgs(b.Name(), args, kw, "port", &a.Port, "host?", &a.Host); err != nil {
		return nil, err
	}
	return value[TCPSocket]{"tcp_socket_action", a}, nil
}

// --- settings ----------------------------------------------------------------

func (r *recorder) versionSettings(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var checkUpdates = true
	if err := starlark.UnpackArgs(b.Name(), args, kw, "check_updates?", &checkUpdates, "constraint?", &r.plan.VersionConstraint); err != nil {
		return nil, err
	}
	return starlark.None, nil
}

func (r *recorder) updateSettings(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var maxParallel, upsertTimeout int
	var suppress starlark.Value
	return starlark.None, starlark.UnpackArgs(b.Name(), args, kw, "max_parallel_updates?", &maxParallel,
		"k8s_upsert_timeout_secs?", &upsertTimeout, "suppress_unused_image_warnings?", &suppress)
}

func (r *recorder) allowK8sContexts(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var contexts starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "contexts", &contexts); err != nil {
		return nil, err
	}
	names, err := stringOrList(b.Name(), "contexts", contexts)
	if err != nil {
		return nil, err
	}
	r.plan.AllowK8sContexts = append(r.plan.AllowK8sContexts, names...)
	return starlark.None, nil
}

func (r *recorder) defaultRegistry(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var host, hostFromCluster, singleName string
	if err := starlark.UnpackArgs(b.Name(), args, kw, "host", &host, "host_from_cluster?", &hostFromCluster, "single_name?", &singleName); err != nil {
		return nil, err
	}
	if host == "" {
		return nil, fmt.Errorf("%s: host is empty", b.Name())
	}
	r.plan.DefaultRegistry = host
	return starlark.None, nil
}

// readJSON is Tilt's read_json: the file decoded, or default when it does
// not exist.
func (r *recorder) readJSON(thread *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var p string
	var def starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "path", &p, "default?", &def); err != nil {
		return nil, err
	}
	// An optional file (one with a default) that is absent is not a path
	// the Tiltfile depends on.
	abs := absPath(thread, p)
	data, err := os.ReadFile(abs)
	if err != nil {
		if def != nil && os.IsNotExist(err) {
			return def, nil
		}
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	r.path(thread, b.Name(), "path", p)
	decode := starlarkjson.Module.Members["decode"]
	v, err := starlark.Call(thread, decode, starlark.Tuple{starlark.String(data)}, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", b.Name(), p, err)
	}
	return v, nil
}

// stringOrList accepts a string or a list of strings.
func stringOrList(fn, arg string, v starlark.Value) ([]string, error) {
	if s, ok := v.(starlark.String); ok {
		return []string{string(s)}, nil
	}
	it, ok := v.(starlark.Iterable)
	if !ok {
		return nil, fmt.Errorf("%s: %s: want a string or a list of strings, got %s", fn, arg, v.Type())
	}
	var out []string
	iter := it.Iterate()
	defer iter.Done()
	var x starlark.Value
	for iter.Next(&x) {
		s, ok := x.(starlark.String)
		if !ok {
			return nil, fmt.Errorf("%s: %s: want strings, got %s", fn, arg, x.Type())
		}
		out = append(out, string(s))
	}
	return out, nil
}

// --- config ------------------------------------------------------------------

type flagDef struct {
	kind  string // bool, string, string_list
	usage string
}

func (r *recorder) defineSetting(kind string) builtinFunc {
	return func(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
		var name, usage string
		var positional bool
		if err := starlark.UnpackArgs(b.Name(), args, kw, "name", &name, "args?", &positional, "usage?", &usage); err != nil {
			return nil, err
		}
		if r.parseCalled {
			return nil, fmt.Errorf("%s(%q): called after config.parse()", b.Name(), name)
		}
		if r.flags == nil {
			r.flags = map[string]flagDef{}
		}
		if _, dup := r.flags[name]; dup || name == "" {
			return nil, fmt.Errorf("%s(%q): empty or defined twice", b.Name(), name)
		}
		if positional {
			if r.positional != "" {
				return nil, fmt.Errorf("%s(%q): %q already takes the positional args", b.Name(), name, r.positional)
			}
			r.positional = name
		}
		r.flags[name] = flagDef{kind: kind, usage: usage}
		return starlark.None, nil
	}
}

// parse reads Options.Args the way Tilt does, with the flag package; only
// settings given on the command line appear in the result.
func (r *recorder) parse(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	r.parseCalled = true
	fs := flag.NewFlagSet("tiltfile", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	values := map[string]*setting{}
	for name, def := range r.flags {
		values[name] = &setting{kind: def.kind}
		if name != r.positional {
			fs.Var(values[name], name, def.usage)
		}
	}
	if err := fs.Parse(r.opts.Args); err != nil {
		return nil, fmt.Errorf("%s: %w", b.Name(), err)
	}
	if rest := fs.Args(); len(rest) > 0 {
		if r.positional == "" {
			return nil, fmt.Errorf("%s: positional args %q given, but no setting takes them", b.Name(), rest)
		}
		for _, a := range rest {
			if err := values[r.positional].Set(a); err != nil {
				return nil, err
			}
		}
	}
	out := starlark.NewDict(len(values))
	for name, v := range values {
		if !v.set {
			continue
		}
		r.plan.Config[name] = v.goValue()
		if err := out.SetKey(starlark.String(name), v.starlark()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// setting is one config value; it is a flag.Value like Tilt's.
type setting struct {
	kind string
	set  bool
	b    bool
	s    string
	list []string
}

func (s *setting) IsBoolFlag() bool { return s.kind == "bool" }
func (s *setting) String() string   { return fmt.Sprint(s.goValue()) }

func (s *setting) Set(v string) error {
	switch s.kind {
	case "bool":
		if s.set {
			return fmt.Errorf("bool settings can be given once")
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return err
		}
		s.b = b
	case "string":
		if s.set {
			return fmt.Errorf("string settings can be given once")
		}
		s.s = v
	default:
		s.list = append(s.list, v)
	}
	s.set = true
	return nil
}

func (s *setting) goValue() any {
	switch s.kind {
	case "bool":
		return s.b
	case "string":
		return s.s
	}
	return s.list
}

func (s *setting) starlark() starlark.Value {
	switch s.kind {
	case "bool":
		return starlark.Bool(s.b)
	case "string":
		return starlark.String(s.s)
	}
	items := make([]starlark.Value, len(s.list))
	for i, v := range s.list {
		items[i] = starlark.String(v)
	}
	return starlark.NewList(items)
}
