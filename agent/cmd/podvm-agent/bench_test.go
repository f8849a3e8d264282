package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/bundle"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/agent/runtime"
)

// BenchmarkContainerStart compares a guest's boot to its container running
// (agent start, disk 0 formatted and mounted, image disks mounted, overlay,
// bundle, OCI runtime) with `<runtime> run --detach` of the same container
// on a plain directory, measured in the same run, with the runtime the
// agent picks (crun when installed, else runc). It reports both and their
// ratio.
//
//	go test -run '^$' -bench ContainerStart -benchtime 10x ./agent/cmd/podvm-agent
func BenchmarkContainerStart(b *testing.B) {
	privtest.Require(b, "boots guests")
	privtest.RequireTools(b, "mkfs.erofs", "mkfs.ext4")
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	rt, err := runtime.New("", b.TempDir())
	if err != nil {
		b.Skip(err)
	}
	var agentTotal, directTotal time.Duration
	for i := 0; i < b.N; i++ {
		spec := image.Spec(fmt.Sprintf("bench-%d", i), "Always", 1, nil,
			[]guestchannel.Container{{Name: "app", Command: []string{"sleep", "3600"}}})
		start := time.Now()
		g := guesttest.Start(b, agentBin, image, spec, guesttest.Options{})
		g.Host.Wait("app running", wait, running("app"))
		agentTotal += time.Since(start)
		g.Host.Stop(1, wait)
		g.Shutdown()

		if err := runtime.OnHostThread(func() error {
			directTotal += directStart(b, rt.Bin, i)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	agent := agentTotal / time.Duration(b.N)
	direct := directTotal / time.Duration(b.N)
	b.ReportMetric(float64(agent.Microseconds())/1000, "agent-ms/op")
	b.ReportMetric(float64(direct.Microseconds())/1000, rt.Name()+"-ms/op")
	b.ReportMetric(float64(agent)/float64(direct), "ratio")
}

// directStart times `rt run --detach` of the container on the staged base
// layer, then removes it.
func directStart(b *testing.B, rt string, i int) time.Duration {
	b.Helper()
	dir := b.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if out, err := exec.Command("cp", "-a", image.BaseDir, rootfs).CombinedOutput(); err != nil {
		b.Fatalf("cp: %v: %s", err, out)
	}
	cgroup := fmt.Sprintf("/podvisor-agentbench-%d-%d", os.Getpid(), i)
	s, err := bundle.Spec(&guestchannel.Container{Name: "app", Command: []string{"sleep", "3600"}},
		bundle.Params{Rootfs: rootfs, Hostname: "bench", CgroupsPath: cgroup + "/app"})
	if err != nil {
		b.Fatal(err)
	}
	if err := bundle.Write(dir, s); err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(dir, "runc")
	id := fmt.Sprintf("agentbench-%d-%d", os.Getpid(), i)
	// Whatever happens below, the container and its cgroup tree (in every
	// hierarchy) go when the benchmark ends.
	b.Cleanup(func() {
		_ = exec.Command(rt, "--root", root, "delete", "--force", id).Run()
		if err := guesttest.RemoveCgroup(cgroup); err != nil {
			b.Error(err)
		}
	})
	// The container inherits the runtime's stdio: a file, not a pipe that would
	// stay open as long as the container runs.
	logf, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(rt, "--root", root, "run", "--detach", "--bundle", dir, id)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if err != nil {
		out, _ := os.ReadFile(logf.Name())
		b.Fatalf("%s run: %v: %s", rt, err, out)
	}
	if out, err := exec.Command(rt, "--root", root, "delete", "--force", id).CombinedOutput(); err != nil {
		b.Errorf("%s delete: %v: %s", rt, err, out)
	}
	return took
}
