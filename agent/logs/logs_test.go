package logs

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func read(t *testing.T, s *Store, name string, req Request) (string, error) {
	t.Helper()
	var b strings.Builder
	err := s.Read(context.Background(), name, req, 4, func(p []byte) error {
		b.Write(p)
		return nil
	})
	return b.String(), err
}

// received gathers what a read sends while a test waits for it.
type received struct {
	mu sync.Mutex
	b  strings.Builder
}

func (r *received) send(p []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b.Write(p)
	return nil
}

func (r *received) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.b.String()
}

// wait waits until what was received is want, for 5 s at most.
func (r *received) wait(t *testing.T, what, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.String() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %q, want %q", what, r.String(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// endFollow ends w, the last instance of container c, and checks that
// the follow of it (done) ends without an error.
func endFollow(t *testing.T, s *Store, w *Writer, done <-chan error) {
	t.Helper()
	w.Close()
	s.Final("c")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end after the container's last instance")
	}
}

func TestTailPreviousAndRotation(t *testing.T) {
	s, err := NewStore(t.TempDir(), 16)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.Begin("c", 0)
	w.Write([]byte("zero\n"))
	w.Close()
	w, _ = s.Begin("c", 1)
	for _, line := range []string{"one\n", "two\n", "three\n", "four\n", "five\n"} {
		w.Write([]byte(line))
	}
	// 16-byte files: the instance rotated, keeping the last file before the
	// current one.
	got, _ := read(t, s, "c", Request{})
	if !strings.HasSuffix(got, "four\nfive\n") || strings.Contains(got, "zero") || len(got) > 32 {
		t.Errorf("log = %q, want the newest lines of instance 1 within two files", got)
	}
	if got, _ := read(t, s, "c", Request{TailLines: 2}); got != "four\nfive\n" {
		t.Errorf("tail 2 = %q", got)
	}
	if got, _ := read(t, s, "c", Request{TailLines: 100}); !strings.HasSuffix(got, "five\n") {
		t.Errorf("tail 100 = %q", got)
	}
	if got, err := read(t, s, "c", Request{Previous: true}); got != "zero\n" || err != nil {
		t.Errorf("previous = %q, %v", got, err)
	}
	w.Close()
	if _, err := read(t, s, "other", Request{Previous: true}); err != ErrNoPrevious {
		t.Errorf("previous of an unknown container: %v", err)
	}
	// An instance whose start failed wrote no log: as the previous one,
	// its log is empty (not an error).
	w, _ = s.Begin("flaky", 0)
	w.Write([]byte("ran\n"))
	w.Close()
	w, _ = s.Begin("flaky", 2) // instance 1 never started
	w.Write([]byte("again\n"))
	if got, err := read(t, s, "flaky", Request{Previous: true}); got != "" || err != nil {
		t.Errorf("previous of an instance that never started = %q, %v; want empty", got, err)
	}
	w.Close()
}

// While a container waits to restart, --previous is the instance that
// just ended (the one its lastState names), even its first; once the next
// instance runs, and after the container's last one, it is the one before.
func TestPreviousDuringBackoff(t *testing.T) {
	s, err := NewStore(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	previous := func(want string) {
		t.Helper()
		got, err := read(t, s, "c", Request{Previous: true})
		if want == "" && err != ErrNoPrevious {
			t.Errorf("previous = %q, %v; want %v", got, err, ErrNoPrevious)
		} else if want != "" && (got != want || err != nil) {
			t.Errorf("previous = %q, %v; want %q", got, err, want)
		}
	}
	w, _ := s.Begin("c", 0)
	w.Write([]byte("zero\n"))
	w.Close()
	previous("") // ended; no restart said yet
	s.Restarting("c", 0)
	previous("zero\n")
	if got, _ := read(t, s, "c", Request{}); got != "zero\n" {
		t.Errorf("logs in back-off = %q, want the ended instance's", got)
	}
	w, _ = s.Begin("c", 1)
	w.Write([]byte("one\n"))
	previous("zero\n")
	w.Close()
	s.Restarting("c", 1)
	previous("one\n")
	w, _ = s.Begin("c", 2)
	w.Close()
	s.Final("c") // terminated for good: lastState stays the one before
	previous("one\n")

	// A first instance whose start failed wrote nothing: in its back-off
	// its log is empty, not missing.
	s.Restarting("never", 0)
	if got, err := read(t, s, "never", Request{Previous: true}); got != "" || err != nil {
		t.Errorf("previous of a start that failed = %q, %v; want empty", got, err)
	}
}

func TestFollowAcrossInstances(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 1<<20)
	w, _ := s.Begin("c", 0)
	w.Write([]byte("a\n"))
	var got received
	done := make(chan error)
	go func() { done <- s.Read(context.Background(), "c", Request{Follow: true}, 1024, got.send) }()
	got.wait(t, "follow", "a\n")
	w.Write([]byte("b\n"))
	got.wait(t, "follow", "a\nb\n")
	w.Close()
	w, _ = s.Begin("c", 1)
	w.Write([]byte("c\n"))
	got.wait(t, "follow", "a\nb\nc\n")
	endFollow(t, s, w, done)
}

// A follow goes on through rotations: it finishes the renamed file and
// carries on with the new one.
func TestFollowAcrossRotation(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 10)
	w, _ := s.Begin("c", 0)
	var got received
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Read(ctx, "c", Request{Follow: true}, 3, got.send) }()
	var want strings.Builder
	for i := range 20 {
		// Every line starts a new 10-byte file.
		line := "line " + string(rune('a'+i)) + "\n"
		want.WriteString(line)
		w.Write([]byte(line))
		got.wait(t, "follow", want.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A follow from the end sends exactly what is written once Open has
// returned: a line written at once after it (before Send runs), the rest
// of a line then only in part written, and what follows across a rotation
// and a restart; nothing written before.
func TestFollowFromTheEnd(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 32)
	w, _ := s.Begin("c", 0)
	w.Write([]byte("old one\nold two\npart"))
	rd, err := s.Open("c", Request{Follow: true, FromEnd: true})
	if err != nil {
		t.Fatal(err)
	}
	// At once, before the follow sends anything; and past the 32 bytes of
	// a file, so written to the next one (as is the second line below).
	w.Write([]byte(" ial\nnew one\n"))
	var got received
	done := make(chan error, 1)
	go func() { done <- rd.Send(context.Background(), 5, got.send) }()
	want := " ial\nnew one\n"
	got.wait(t, "follow from the end", want)
	for _, line := range []string{"rotated a\n", "rotated b\n", "rotated c\n"} {
		w.Write([]byte(line))
		want += line
		got.wait(t, "follow from the end", want)
	}
	w.Close()
	w, _ = s.Begin("c", 1)
	w.Write([]byte("restarted\n"))
	want += "restarted\n"
	got.wait(t, "follow from the end", want)
	endFollow(t, s, w, done)
	if got.String() != want {
		t.Errorf("follow from the end = %q, want %q", got.String(), want)
	}
}

// From the end without a follow is nothing (still an error for a previous
// instance that does not exist); with lines to tail it is refused.
func TestReadFromTheEnd(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 1<<20)
	w, _ := s.Begin("c", 0)
	w.Write([]byte("one\ntwo\n"))
	defer w.Close()
	for _, tc := range []struct {
		name    string
		ctr     string
		req     Request
		wantErr string
	}{
		{"the current instance", "c", Request{FromEnd: true}, ""},
		{"a container not started", "later", Request{FromEnd: true}, ""},
		{"no previous instance", "c", Request{FromEnd: true, Previous: true}, ErrNoPrevious.Error()},
		{"with tail lines", "c", Request{FromEnd: true, TailLines: 1}, "tailLines 1 with fromEnd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := read(t, s, tc.ctr, tc.req)
			if got != "" || (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("read %+v = %q, %v; want nothing and an error containing %q", tc.req, got, err, tc.wantErr)
			}
		})
	}
}

// An agent started again on the same disk (a guest rebooted, an agent
// that crashed) goes on with the logs the earlier one left: before its
// first instance, and while that first instance runs, --previous is the
// earlier boot's last instance, which that first instance does not
// overwrite; the instances the caller numbers start at 0 again. A
// container keeps the files of two instances, whatever its restarts and
// boots, and a follow started before the new boot's first instance waits
// for it.
func TestAnotherBootGoesOnWithTheLog(t *testing.T) {
	dir := t.TempDir()
	boot := func(want string) *Store {
		t.Helper()
		s, err := NewStore(dir, 16)
		if err != nil {
			t.Fatal(err)
		}
		got, err := read(t, s, "c", Request{Previous: true})
		if want == "" && err != ErrNoPrevious {
			t.Errorf("previous on a fresh disk = %q, %v; want %v", got, err, ErrNoPrevious)
		} else if want != "" && (got != want || err != nil) {
			t.Errorf("previous before the boot's first instance = %q, %v; want the earlier boot's last, %q", got, err, want)
		}
		return s
	}
	s := boot("")
	for i, line := range []string{"boot 1 first\n", "boot 1 second\n", "boot 1 last\n"} {
		w, _ := s.Begin("c", i)
		w.Write([]byte(line))
		w.Close()
		s.Restarting("c", i)
	}
	w, _ := s.Begin("other", 0) // still being written when the agent ends
	w.Write([]byte("other, boot 1\n"))

	s = boot("boot 1 last\n")
	var follow received
	done := make(chan error, 1)
	go func() { done <- s.Read(context.Background(), "c", Request{Follow: true}, 1024, follow.send) }()
	w, _ = s.Begin("c", 0)
	w.Write([]byte("boot 2 first\n"))
	follow.wait(t, "a follow begun before the boot's first instance", "boot 2 first\n")
	if got, err := read(t, s, "c", Request{}); got != "boot 2 first\n" || err != nil {
		t.Errorf("log = %q, %v; want the boot's first instance's", got, err)
	}
	if got, err := read(t, s, "c", Request{Previous: true}); got != "boot 1 last\n" || err != nil {
		t.Errorf("previous while the boot's first instance runs = %q, %v; want the earlier boot's last", got, err)
	}
	if got, err := read(t, s, "other", Request{Previous: true}); got != "other, boot 1\n" || err != nil {
		t.Errorf("previous of a container whose instance the agent's end cut = %q, %v", got, err)
	}
	w.Close()
	s.Restarting("c", 0)
	w, _ = s.Begin("c", 1)
	w.Write([]byte("boot 2 second\n"))
	w.Write([]byte("rotated\n")) // past 16 bytes: in a new file
	if got, _ := read(t, s, "c", Request{Previous: true}); got != "boot 2 first\n" {
		t.Errorf("previous after the boot's first restart = %q, want the boot's first instance", got)
	}
	endFollow(t, s, w, done)
	s.Close()
	files := func(want ...string) {
		t.Helper()
		entries, _ := os.ReadDir(filepath.Join(dir, "c"))
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if !slices.Equal(got, want) {
			t.Errorf("files of c = %v, want %v", got, want)
		}
	}
	// Boot 1's instances were files 0 to 2, boot 2's 3 and 4 (rotated
	// once): the last two instances are kept, and once another boot
	// begins, the last.
	files("3.log", "4.log", "4.log.1")
	s = boot("boot 2 second\nrotated\n")
	s.Close()
	files("4.log", "4.log.1")
}

// Within a boot too a container keeps the files of its current instance
// and the one before, however often it restarts.
func TestRestartsKeepTwoInstances(t *testing.T) {
	dir := t.TempDir()
	s, _ := NewStore(dir, 1<<20)
	for i := range 10 {
		w, _ := s.Begin("c", i)
		w.Write([]byte("instance " + strconv.Itoa(i) + "\n"))
		w.Close()
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "c"))
	if len(entries) != 2 || entries[0].Name() != "8.log" || entries[1].Name() != "9.log" {
		t.Errorf("files after 10 instances: %v, want 8.log and 9.log", entries)
	}
	if got, _ := read(t, s, "c", Request{Previous: true}); got != "instance 8\n" {
		t.Errorf("previous = %q", got)
	}
}
