package logs

import (
	"context"
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

func TestFollowAcrossInstances(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 1<<20)
	w, _ := s.Begin("c", 0)
	w.Write([]byte("a\n"))
	var mu sync.Mutex
	var got strings.Builder
	done := make(chan error)
	go func() {
		done <- s.Read(context.Background(), "c", Request{Follow: true}, 1024, func(p []byte) error {
			mu.Lock()
			got.Write(p)
			mu.Unlock()
			return nil
		})
	}()
	waitText := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			text := got.String()
			mu.Unlock()
			if text == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("follow = %q, want %q", text, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitText("a\n")
	w.Write([]byte("b\n"))
	waitText("a\nb\n")
	w.Close()
	w, _ = s.Begin("c", 1)
	w.Write([]byte("c\n"))
	waitText("a\nb\nc\n")
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

// A follow goes on through rotations: it finishes the renamed file and
// carries on with the new one.
func TestFollowAcrossRotation(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 10)
	w, _ := s.Begin("c", 0)
	var mu sync.Mutex
	var got strings.Builder
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- s.Read(ctx, "c", Request{Follow: true}, 3, func(p []byte) error {
			mu.Lock()
			got.Write(p)
			mu.Unlock()
			return nil
		})
	}()
	var want strings.Builder
	for i := range 20 {
		// Every line starts a new 10-byte file.
		line := "line " + string(rune('a'+i)) + "\n"
		want.WriteString(line)
		w.Write([]byte(line))
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			text := got.String()
			mu.Unlock()
			if text == want.String() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("follow = %q, want %q", text, want.String())
			}
			time.Sleep(time.Millisecond)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
