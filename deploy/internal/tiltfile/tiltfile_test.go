package tiltfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// project writes files (path → content) under a temp dir and returns it.
func project(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const helpers = `
HERE = os.getcwd()
ROOT = os.path.dirname(config.main_path)

def service(name):
    # A relative path in a loaded file resolves against the loaded file's dir.
    local_resource(name, serve_cmd='./run ' + name, deps=['src', os.path.join(ROOT, 'shared')],
                   readiness_probe=probe(period_secs=2, http_get=http_get_action(port=8081, path='/readyz')),
                   labels='services', links=['http://localhost:8081', link('http://x', 'metrics')])
`

func TestExecuteRecordsResourcesAndResolvesPathsLikeTilt(t *testing.T) {
	dir := project(t, map[string]string{
		"Tiltfile": `
version_settings(constraint='>=0.33.0')
load('./lib/helpers.tiltfile', 'service', 'HERE')
config.define_bool('local')
config.define_string_list('only', args=True)
cfg = config.parse()
if cfg.get('local', False):
    service('api')
else:
    docker_build('example/app', '.', dockerfile='build/Dockerfile', target='dev', only=['bin'],
                 live_update=[sync('bin/app', '/tmp/app'), run(['/restart.sh'], trigger=['bin/app'])])
    k8s_yaml(kustomize('k8s'))
    k8s_resource('api', port_forwards=[8080, '9000:90', port_forward(7000, 70, name='x')],
                 resource_deps=['infra'], labels=['services'], trigger_mode=TRIGGER_MODE_MANUAL)
print('mode', cfg)
`,
		"lib/helpers.tiltfile": helpers,
	})
	kustomize := func(d string) ([]byte, error) { return []byte("kind: List\n# from " + d), nil }

	local, err := Execute(filepath.Join(dir, "Tiltfile"), Options{Args: []string{"--local", "a", "b"}, Kustomize: kustomize})
	if err != nil {
		t.Fatalf("Execute --local: %v", err)
	}
	if local.VersionConstraint != ">=0.33.0" {
		t.Errorf("version constraint = %q", local.VersionConstraint)
	}
	if local.Config["local"] != true || !slices.Equal(local.Config["only"].([]string), []string{"a", "b"}) {
		t.Errorf("config = %v, want local=true only=[a b]", local.Config)
	}
	if len(local.LocalResources) != 1 {
		t.Fatalf("local resources = %+v", local.LocalResources)
	}
	lr := local.LocalResources[0]
	wantDeps := []string{filepath.Join(dir, "lib", "src"), filepath.Join(dir, "shared")}
	if !slices.Equal(lr.Deps, wantDeps) {
		t.Errorf("deps = %v, want %v (relative to the loaded file)", lr.Deps, wantDeps)
	}
	if lr.ServeDir != filepath.Join(dir, "lib") {
		t.Errorf("serve_dir default = %q, want the loaded file's dir", lr.ServeDir)
	}
	if lr.Readiness == nil || lr.Readiness.HTTPGet == nil || lr.Readiness.HTTPGet.Port != 8081 || lr.Readiness.PeriodSecs != 2 {
		t.Errorf("readiness = %+v", lr.Readiness)
	}
	if !slices.Equal(lr.Labels, []string{"services"}) || len(lr.Links) != 2 || lr.Links[1].Name != "metrics" {
		t.Errorf("labels %v links %v", lr.Labels, lr.Links)
	}
	if len(local.Output) != 1 || !strings.Contains(local.Output[0], `"local": True`) {
		t.Errorf("print output = %q", local.Output)
	}

	cluster, err := Execute(filepath.Join(dir, "Tiltfile"), Options{Kustomize: kustomize})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if len(cluster.Config) != 0 {
		t.Errorf("config without args = %v, want empty (unset settings are absent)", cluster.Config)
	}
	img := cluster.Images[0]
	if img.Context != dir || img.Dockerfile != filepath.Join(dir, "build", "Dockerfile") || img.Target != "dev" {
		t.Errorf("image = %+v", img)
	}
	if len(img.LiveUpdate) != 2 || img.LiveUpdate[0].Local != filepath.Join(dir, "bin", "app") || img.LiveUpdate[1].Cmd != "/restart.sh" {
		t.Errorf("live_update = %+v", img.LiveUpdate)
	}
	if len(cluster.YAML) != 1 || !strings.Contains(cluster.YAML[0], "# from "+filepath.Join(dir, "k8s")) {
		t.Errorf("k8s_yaml = %q", cluster.YAML)
	}
	res := cluster.K8sResources[0]
	wantPF := []PortForward{{Local: 8080, Container: 8080}, {Local: 9000, Container: 90}, {Local: 7000, Container: 70, Name: "x"}}
	if !slices.Equal(res.PortForwards, wantPF) || res.TriggerMode != TriggerManual {
		t.Errorf("k8s_resource = %+v", res)
	}
	var onlyRef bool
	for _, p := range cluster.Paths {
		onlyRef = onlyRef || (p.Arg == "only" && p.Path == filepath.Join(dir, "bin"))
	}
	if !onlyRef {
		t.Errorf("only=['bin'] not recorded as %s/bin in %v", dir, cluster.Paths)
	}
}

func TestExecuteRejects(t *testing.T) {
	tests := []struct {
		name, tiltfile, wantErr string
		args                    []string
	}{
		{name: "remote extension", tiltfile: "load('ext://restart_process', 'docker_build_with_restart')\n", wantErr: "remote extensions are not allowed"},
		{name: "misspelt keyword", tiltfile: "local_resource('x', cmd='true', dep=['a'])\n", wantErr: "unexpected keyword argument \"dep\""},
		{name: "unknown builtin", tiltfile: "helm('chart')\n", wantErr: "undefined: helm"},
		{name: "probe without action", tiltfile: "probe(period_secs=1)\n", wantErr: "exactly one of exec, http_get, tcp_socket"},
		{name: "probe without serve_cmd", tiltfile: "local_resource('x', cmd='true', readiness_probe=probe(tcp_socket=tcp_socket_action(1)))\n", wantErr: "needs a serve_cmd"},
		{name: "duplicate resource", tiltfile: "local_resource('x', cmd='a')\nlocal_resource('x', cmd='b')\n", wantErr: "already exists"},
		{name: "unknown flag", tiltfile: "config.define_bool('local')\nconfig.parse()\n", args: []string{"--lokal"}, wantErr: "flag provided but not defined: -lokal"},
		{name: "fail()", tiltfile: "fail('no cluster')\n", wantErr: "no cluster"},
		{name: "relative sync target", tiltfile: "sync('.', 'app')\n", wantErr: "is not absolute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := project(t, map[string]string{"Tiltfile": tt.tiltfile})
			_, err := Execute(filepath.Join(dir, "Tiltfile"), Options{Args: tt.args})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Execute err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
