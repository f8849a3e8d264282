package logs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// after waits until the clock has passed t, and returns the time then: a
// write after it gets a later time than one before t.
func after(t time.Time) time.Time {
	for {
		if now := time.Now(); now.After(t) {
			return now
		}
	}
}

// stamped splits a timestamped read into lines, checking that every line
// starts with a time within [from, to] and returning the lines without it
// and the times.
func stamped(t *testing.T, got string, from, to time.Time) (lines []string, times []time.Time) {
	t.Helper()
	for _, line := range strings.SplitAfter(got, "\n") {
		if line == "" {
			continue
		}
		ts, text, ok := strings.Cut(line, " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if !ok || err != nil || len(ts) != len(timeFormat)-len("Z07:00")+1 || at.Before(from) || at.After(to) {
			t.Fatalf("line %q: want an RFC 3339 time of %s to %s, fixed width, and a space first", line, from, to)
		}
		lines, times = append(lines, text), append(times, at)
	}
	return lines, times
}

// Lines carry the time their first byte was written, across a rotation
// that falls in the middle of a line: a read sends the bytes as written
// unless asked for timestamps; since leaves out whole lines begun before
// it (a line's later piece is not sent alone); tail counts the lines, not
// the pieces; a limit cuts the output, timestamps included.
func TestTimestampsSinceAndLimitAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	// 150 bytes: the second write does not fit beside the first, so it
	// begins a new file with the rest of the line "partial".
	s, err := NewStore(dir, 150)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w, _ := s.Begin("c", 0)
	defer w.Close()
	w.Write([]byte("first\npart"))
	mid := after(time.Now())
	w.Write([]byte("ial\nsecond\n"))
	w.Write([]byte("third\n"))
	end := after(time.Now())
	if _, err := os.Stat(filepath.Join(dir, "c", "0.log.1")); err != nil {
		t.Fatalf("the log did not rotate: %v", err)
	}

	all := "first\npartial\nsecond\nthird\n"
	for _, tc := range []struct {
		name string
		req  Request
		want string
	}{
		{"raw", Request{}, all},
		{"tail across the rotation", Request{TailLines: 3}, "partial\nsecond\nthird\n"},
		{"since", Request{Since: mid}, "second\nthird\n"},
		{"since before all", Request{Since: start}, all},
		{"since after all", Request{Since: end}, ""},
		{"tail and since", Request{TailLines: 3, Since: mid}, "second\nthird\n"},
		{"limit", Request{LimitBytes: 10}, "first\npart"},
		{"limit past the end", Request{LimitBytes: 1000}, all},
		{"limit and since", Request{LimitBytes: 8, Since: mid}, "second\nt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := read(t, s, "c", tc.req); got != tc.want || err != nil {
				t.Errorf("read %+v = %q, %v; want %q", tc.req, got, err, tc.want)
			}
		})
	}

	got, err := read(t, s, "c", Request{Timestamps: true})
	if err != nil {
		t.Fatal(err)
	}
	lines, times := stamped(t, got, start, end)
	if strings.Join(lines, "") != all {
		t.Fatalf("timestamped lines = %q, want %q", lines, all)
	}
	// "partial" began before mid: its time is its first piece's.
	if !times[1].Before(mid) || times[2].Before(mid) {
		t.Errorf("times %v: want partial's before %s, second's after", times, mid)
	}
	last, _ := read(t, s, "c", Request{Timestamps: true, TailLines: 1})
	if !strings.HasSuffix(last, "Z third\n") || len(last) != len(timeFormat)-5+len(" third\n") {
		t.Errorf("tail 1 with timestamps = %q", last)
	}
	limit := int64(len(last) - 3)
	if cut, _ := read(t, s, "c", Request{Timestamps: true, TailLines: 1, LimitBytes: limit}); cut != last[:limit] {
		t.Errorf("limit %d with timestamps = %q, want %q", limit, cut, last[:limit])
	}
}

// A follow with timestamps stamps each line once, at its first piece, a
// line written in pieces included; since holds for what it follows too;
// and a follow with a limit ends once it has sent that much, while the
// container still runs.
func TestFollowWithTimestampsSinceAndLimit(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 100)
	w, _ := s.Begin("c", 0)
	defer w.Close()
	w.Write([]byte("old\n"))
	since := after(time.Now())
	var got received
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- s.Read(ctx, "c", Request{Follow: true, Timestamps: true, Since: since}, 7, got.send)
	}()
	w.Write([]byte("new"))
	w.Write([]byte(" line\n")) // past 100 bytes: in the next file
	w.Write([]byte("next\n"))
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(got.String(), "\n") < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	lines, _ := stamped(t, got.String(), since, time.Now())
	if strings.Join(lines, "") != "new line\nnext\n" {
		t.Errorf("follow since %s with timestamps = %q, want new line and next, each stamped once", since, got.String())
	}

	var limited received
	go func() {
		done <- s.Read(context.Background(), "c", Request{Follow: true, LimitBytes: 6}, 4, limited.send)
	}()
	select {
	case err := <-done:
		if err != nil || limited.String() != "old\nne" {
			t.Errorf("follow with limit 6 = %q, %v; want %q", limited.String(), err, "old\nne")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a follow did not end at its limit")
	}
}

// A log file an agent wrote before records had times is read line by
// line as it was: raw, and before any since.
func TestRawFileOfAnEarlierAgent(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "c", "0.log"), []byte("raw one\nraw two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := NewStore(dir, 1<<20)
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Previous: true}, "raw one\nraw two\n"},
		{Request{Previous: true, TailLines: 1}, "raw two\n"},
		{Request{Previous: true, Since: time.Now()}, ""},
	} {
		if got, err := read(t, s, "c", tc.req); got != tc.want || err != nil {
			t.Errorf("read %+v = %q, %v; want %q", tc.req, got, err, tc.want)
		}
	}
}

// A follow that crosses a restart begins the new instance's output on a
// line of its own: the ended instance's unfinished line (it died in the
// middle of one) ends with a newline when it was sent, and is left out with
// since when it began before, while the new instance's first line is
// stamped and sent as any line.
func TestFollowAcrossARestartInTheMiddleOfALine(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 1<<20)
	w, _ := s.Begin("c", 0)
	w.Write([]byte("progress..."))
	since := after(time.Now())
	// Opened now, both follow instance 0 and cross the restart below.
	plain, err := s.Open("c", Request{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	stampedSince, err := s.Open("c", Request{Follow: true, Timestamps: true, Since: since})
	if err != nil {
		t.Fatal(err)
	}
	var gotPlain, gotStamped received
	done := make(chan error, 2)
	go func() { done <- plain.Send(context.Background(), 4, gotPlain.send) }()
	go func() { done <- stampedSince.Send(context.Background(), 4, gotStamped.send) }()
	w.Close()
	w, _ = s.Begin("c", 1)
	w.Write([]byte("started\n"))
	w.Write([]byte("second\n"))
	endFollow(t, s, w, done)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, want := gotPlain.String(), "progress...\nstarted\nsecond\n"; got != want {
		t.Errorf("follow across the restart = %q, want %q", got, want)
	}
	lines, _ := stamped(t, gotStamped.String(), since, time.Now())
	if got, want := strings.Join(lines, ""), "started\nsecond\n"; got != want {
		t.Errorf("follow since %s with timestamps across the restart = %q, want %q", since, gotStamped.String(), want)
	}
}

// A follow of the instance being written waits for the rest of a record
// that is not whole yet, instead of taking the piece for a raw line.
func TestFollowWaitsForTheRestOfARecord(t *testing.T) {
	s, _ := NewStore(t.TempDir(), 1<<20)
	w, _ := s.Begin("c", 0)
	defer w.Close()
	var got received
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Read(ctx, "c", Request{Follow: true}, 4, got.send) }()
	rec := string(records(time.Now(), []byte("a\nhalf\n")))
	cut := strings.Index(rec, "\n") + 10 // in the middle of the second record's time
	// Written as a writer slower than the store's own would: in two pieces.
	appendAndWake := func(b string) {
		f, err := os.OpenFile(s.path("c", 0), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(b); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.ctr("c").broadcast()
		s.mu.Unlock()
	}
	appendAndWake(rec[:cut])
	got.wait(t, "follow", "a\n")
	appendAndWake(rec[cut:])
	got.wait(t, "follow", "a\nhalf\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// The lines of a file an agent wrote before records had times are raw
// whole lines, whatever they begin with: a line that starts with a time and
// words is not taken for a record unless its stream and tag are a record's.
// Its last line is sent though no newline ends it, and, without a time, it
// gets no timestamp.
func TestRawLinesThatLookLikeRecords(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "c"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw := "2026-12-06T10:00:00.123Z INFO server started\n" +
		"2026-12-06T10:00:01Z WARN Process slow\n" +
		"2026-12-06T10:00:02Z stdout Partly true\n" +
		"raw one\nlast words"
	if err := os.WriteFile(filepath.Join(dir, "c", "0.log"), []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := NewStore(dir, 1<<20)
	for _, tc := range []struct {
		req  Request
		want string
	}{
		{Request{Previous: true}, raw},
		{Request{Previous: true, Timestamps: true}, raw},
		{Request{Previous: true, TailLines: 2}, "raw one\nlast words"},
		{Request{Previous: true, TailLines: 1, Timestamps: true}, "last words"},
		{Request{Previous: true, Since: time.Now()}, ""},
	} {
		if got, err := read(t, s, "c", tc.req); got != tc.want || err != nil {
			t.Errorf("read %+v = %q, %v; want %q", tc.req, got, err, tc.want)
		}
	}

	// The records of CRI log files that other tags and streams than ours
	// may carry are records all the same.
	for line, want := range map[string]record{
		"2026-12-06T10:00:00Z stderr F:x oops":  {text: []byte("oops"), full: true},
		"2026-12-06T10:00:00Z stdout P:y part":  {text: []byte("part")},
		"2026-12-06T10:00:00Z stdout F ":        {text: []byte{}, full: true},
		"2026-12-06T10:00:00Z stdout PF no":     {text: []byte("2026-12-06T10:00:00Z stdout PF no"), full: true},
		"2026-12-06T10:00:00Z stdouts F no":     {text: []byte("2026-12-06T10:00:00Z stdouts F no"), full: true},
		"2026-12-06T10:00:00Z stdout F":         {text: []byte("2026-12-06T10:00:00Z stdout F"), full: true},
		"yesterday stdout F not a time, no one": {text: []byte("yesterday stdout F not a time, no one"), full: true},
	} {
		r := parseRecord([]byte(line))
		if string(r.text) != string(want.text) || r.full != want.full || r.t.IsZero() != (string(want.text) == line) {
			t.Errorf("parseRecord(%q) = %q, full %v, time %s; want %q, full %v", line, r.text, r.full, r.t, want.text, want.full)
		}
	}
}
