package supervisor

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A process tree is the command and what it started, as they are when it
// is taken: signalled, every one of them ends, the children a signal to
// the command alone would leave running included.
func TestAProcessTreeEndsWithWhatItsCommandStarted(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 300 & sleep 300 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var tree processTree
	deadline := time.Now().Add(10 * time.Second)
	for len(tree) < 3 && time.Now().Before(deadline) {
		tree = treeOf(cmd.Process.Pid)
		time.Sleep(10 * time.Millisecond)
	}
	if len(tree) != 3 {
		_ = cmd.Process.Kill()
		t.Fatalf("the tree of sh and its two sleeps: %+v", tree)
	}
	tree.signal(unix.SIGTERM)
	<-done
	tree.killAfter(time.Now().Add(5 * time.Second))
	for _, p := range tree[1:] {
		if _, start, state, ok := procStat(p.pid); ok && start == p.start && state != 'Z' {
			t.Errorf("process %d of the tree still runs after its signal", p.pid)
		}
	}
	if treeOf(-1) != nil {
		t.Error("the tree of no process is not empty")
	}
}
