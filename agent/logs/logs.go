// Package logs keeps the containers' output on the ephemeral disk and reads
// it back for the host: the last lines (tail), the previous instance of a
// restarted container, and a follow that carries on across restarts.
//
// The previous instance is the one the container's lastState names: the
// instance before the running one, or, while the container waits to
// restart (Restarting), the one that just ended.
//
// A read starts where Open puts it (Send then sends): some lines before
// the end, the whole log, or its end (Request.FromEnd), so that a follow
// from the end sends every byte written once Open has returned, and none
// written before, on across rotations and restarts as any follow.
//
// Each instance of a container (the first start is instance 0, every restart
// the next) writes dir/<container>/<n>.log, raw bytes as the container wrote
// them, stdout and stderr in write order. A file that grows past the size
// limit is renamed <n>.log.1 (replacing an older one) and a new one begun,
// so an instance keeps at most twice the limit, and a container keeps the
// files of two instances, the current one and the one before: --previous
// reads no further back (as the kubelet keeps one dead container).
//
// The files outlive the agent: an agent started again on the same disk (a
// guest that rebooted, an agent that crashed) numbers its instances on from
// the last file it finds (n is that one's plus one plus the instance), so
// the earlier boot's last instance is the first instance's previous one,
// which the pod's lastState names after such a restart, instead of being
// overwritten by it. The instances the callers number (and the restart
// count) still start at 0 with every boot.
package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// ErrNoPrevious is returned for --previous on a container that has no
// instance before the current one, in this boot or an earlier one on this
// disk. Its text is the protocol's, which the host recognizes.
var ErrNoPrevious = errors.New(guestchannel.NoPreviousInstance)

// Store is the log directory of a pod.
type Store struct {
	dir      string
	maxBytes int64
	mu       sync.Mutex
	ctrs     map[string]*ctrLog
	closed   chan struct{}
	once     sync.Once
}

// A ctrLog's instance and previous are file numbers (<n>.log): a caller's
// instance plus base.
type ctrLog struct {
	// base is the file number of this boot's instance 0: one past the
	// last file an earlier boot left, 0 on a fresh disk.
	base     int
	instance int // current instance, -1 before this boot's first start
	// previous is the instance a --previous read gets, -1 for none: the
	// one before the current (before this boot's first, the earlier
	// boot's last), or, once Restarting said so, the current one that
	// ended.
	previous int
	ended    bool // the current instance's writer closed
	final    bool // no instance will follow
	changed  chan struct{}
}

// NewStore keeps logs under dir, rotating files past maxBytes. The logs an
// earlier agent left in dir go on: each container's last instance is kept
// as the previous one, its older files removed.
func NewStore(dir string, maxBytes int64) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	s := &Store{dir: dir, maxBytes: maxBytes, ctrs: map[string]*ctrLog{}, closed: make(chan struct{})}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		last := -1
		for _, n := range s.files(e.Name()) {
			last = max(last, n)
		}
		if last < 0 {
			continue
		}
		s.prune(e.Name(), last)
		c := s.ctr(e.Name())
		c.base, c.previous = last+1, last
	}
	return s, nil
}

// files lists the files of container name's log directory by the instance
// they are of (the file number).
func (s *Store) files(name string) map[string]int {
	entries, _ := os.ReadDir(filepath.Join(s.dir, name))
	out := map[string]int{}
	for _, e := range entries {
		num, ok := strings.CutSuffix(strings.TrimSuffix(e.Name(), ".1"), ".log")
		if n, err := strconv.Atoi(num); ok && err == nil && n >= 0 {
			out[e.Name()] = n
		}
	}
	return out
}

// prune removes the files of container name's instances before keep: only
// the current instance and the one before are ever read.
func (s *Store) prune(name string, keep int) {
	for file, n := range s.files(name) {
		if n < keep {
			_ = os.Remove(filepath.Join(s.dir, name, file))
		}
	}
}

// Close ends every follow.
func (s *Store) Close() { s.once.Do(func() { close(s.closed) }) }

func (s *Store) ctr(name string) *ctrLog {
	c, ok := s.ctrs[name]
	if !ok {
		c = &ctrLog{instance: -1, previous: -1, changed: make(chan struct{})}
		s.ctrs[name] = c
	}
	return c
}

// broadcast wakes followers; s.mu held.
func (c *ctrLog) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (s *Store) path(name string, instance int) string {
	return filepath.Join(s.dir, name, fmt.Sprintf("%d.log", instance))
}

// Writer receives one instance's output.
type Writer struct {
	s        *Store
	name     string
	instance int // file number
	f        *os.File
	size     int64
}

// Begin starts the log of instance of container name (0 for this boot's
// first).
func (s *Store) Begin(name string, instance int) (*Writer, error) {
	if err := os.MkdirAll(filepath.Join(s.dir, name), 0o755); err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	s.mu.Lock()
	n := s.ctr(name).base + instance
	s.mu.Unlock()
	p := s.path(name, n)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	_ = os.Remove(p + ".1")
	s.prune(name, n-1)
	s.mu.Lock()
	c := s.ctr(name)
	c.instance, c.previous, c.ended, c.final = n, n-1, false, false
	c.broadcast()
	s.mu.Unlock()
	return &Writer{s: s, name: name, instance: n, f: f}, nil
}

// Write appends p, rotating first when the file is full.
func (w *Writer) Write(p []byte) (int, error) {
	if w.size > 0 && w.size+int64(len(p)) > w.s.maxBytes {
		path := w.s.path(w.name, w.instance)
		w.f.Close()
		if err := os.Rename(path, path+".1"); err != nil {
			return 0, fmt.Errorf("logs: rotate: %w", err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return 0, fmt.Errorf("logs: rotate: %w", err)
		}
		w.f, w.size = f, 0
	}
	n, err := w.f.Write(p)
	w.size += int64(n)
	w.s.mu.Lock()
	w.s.ctr(w.name).broadcast()
	w.s.mu.Unlock()
	return n, err
}

// Close ends the instance's log.
func (w *Writer) Close() error {
	err := w.f.Close()
	w.s.mu.Lock()
	c := w.s.ctr(w.name)
	if c.instance == w.instance {
		c.ended = true
	}
	c.broadcast()
	w.s.mu.Unlock()
	return err
}

// Copy writes everything read from r to a new log of the instance, then
// closes it: the pump between a container's output pipe and its log.
func (s *Store) Copy(name string, instance int, r io.Reader) error {
	w, err := s.Begin(name, instance)
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	return errors.Join(err, w.Close())
}

// Restarting says that instance of container name has ended and the
// container waits to start again: until the next instance begins, a
// --previous read gets this one. The kubelet reads the container of the
// status's lastState, which in back-off is the instance that just ended
// (a liveness kill's, a crash's), not the one before it.
func (s *Store) Restarting(name string, instance int) {
	s.mu.Lock()
	c := s.ctr(name)
	c.previous = c.base + instance
	s.mu.Unlock()
}

// Final says that container name will not start again: a follow ends at
// the end of its last log.
func (s *Store) Final(name string) {
	s.mu.Lock()
	c := s.ctr(name)
	c.final = true
	c.broadcast()
	s.mu.Unlock()
}

// Request is what to read.
type Request struct {
	Follow   bool
	Previous bool
	// TailLines, when > 0, starts that many lines before the end; 0 (and
	// no FromEnd) reads the whole log.
	TailLines int64
	// FromEnd starts at the end of the log as Open finds it: nothing of
	// what was written before, and with Follow every byte written after
	// (the rest of a line then only in part written included).
	FromEnd bool
}

// Read sends the log of container name to send in chunks of at most
// chunk bytes, following it when asked until ctx ends, the container will
// not start again, or the store closes: Open, then Send.
func (s *Store) Read(ctx context.Context, name string, req Request, chunk int, send func([]byte) error) error {
	rd, err := s.Open(name, req)
	if err != nil {
		return err
	}
	return rd.Send(ctx, chunk, send)
}

// Reading is a read of one container's log whose start Open has fixed.
type Reading struct {
	s      *Store
	name   string
	follow bool
	r      reader
}

// Open fixes where a read of container name's log starts: for a request
// FromEnd, at the end of the file being written as Open returns, so that
// what is written from then on is sent and nothing before it. Send must
// follow (it closes the file Open opened).
func (s *Store) Open(name string, req Request) (*Reading, error) {
	if req.FromEnd && req.TailLines > 0 {
		return nil, fmt.Errorf("logs: tailLines %d with fromEnd: start lines before the end or at it, not both", req.TailLines)
	}
	rd := &Reading{s: s, name: name, follow: req.Follow, r: reader{s: s, name: name}}
	s.mu.Lock()
	c, ok := s.ctrs[name]
	instance, previous := -1, -1
	if ok {
		instance, previous = c.instance, c.previous
	}
	s.mu.Unlock()
	if req.Previous {
		if previous < 0 {
			return nil, ErrNoPrevious
		}
		instance = previous
		rd.follow = false
		if _, err := os.Stat(s.path(name, instance)); errors.Is(err, fs.ErrNotExist) {
			// That instance never got its process started (its start
			// failed), so it wrote nothing: its log is empty.
			return rd, nil
		}
	}
	if instance < 0 {
		// Nothing written yet: a follow starts with the first instance's
		// first byte, whenever it comes.
		return rd, nil
	}
	if err := rd.r.start(instance, req.TailLines, req.FromEnd); err != nil {
		rd.r.close()
		return nil, err
	}
	return rd, nil
}

// Send sends what Open found to send, then, following, what is written
// after, until ctx ends, the container will not start again, or the store
// closes.
func (rd *Reading) Send(ctx context.Context, chunk int, send func([]byte) error) error {
	s, name, r := rd.s, rd.name, &rd.r
	r.chunk, r.send = chunk, send
	defer r.close()
	if err := r.sendAll(r.pending); err != nil {
		return err
	}
	r.pending = nil
	if !rd.follow {
		return r.drain()
	}
	for {
		s.mu.Lock()
		c := s.ctr(name)
		wake := c.changed
		cur, ended, final := c.instance, c.ended, c.final
		s.mu.Unlock()
		if err := r.drain(); err != nil {
			return err
		}
		switch {
		case r.f == nil && cur >= 0:
			// the first instance began while we waited
			if err := r.open(cur); err != nil {
				return err
			}
			continue
		case r.f != nil && r.rotated():
			if err := r.drain(); err != nil {
				return err
			}
			if err := r.next(); err != nil {
				return err
			}
			continue
		case r.f != nil && cur > r.instance:
			// drained the ended instance; go on with the newest
			if err := r.drain(); err != nil {
				return err
			}
			r.close()
			if err := r.open(cur); err != nil {
				return err
			}
			continue
		case final && (ended || cur < 0):
			// Its last instance's log is sent, or it never started
			// and will not (a pod whose init container failed).
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil
		case <-s.closed:
			return r.drain()
		}
	}
}

type reader struct {
	s        *Store
	name     string
	instance int
	chunk    int
	send     func([]byte) error
	f        *os.File
	// pending is what start read to send before what follows r.f's
	// offset.
	pending []byte
}

// start opens the instance's log where a read begins: at its end when
// fromEnd, else tail lines before it (from its start when tail is 0),
// what comes before the end then held in r.pending.
func (r *reader) start(instance int, tail int64, fromEnd bool) error {
	if err := r.open(instance); err != nil {
		return err
	}
	if fromEnd {
		if _, err := r.f.Seek(0, io.SeekEnd); err != nil {
			return fmt.Errorf("logs: %w", err)
		}
		return nil
	}
	old, _ := os.ReadFile(r.s.path(r.name, instance) + ".1")
	cur, err := io.ReadAll(r.f)
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	all := append(old, cur...)
	if tail > 0 {
		all = tailLines(all, tail)
	}
	r.pending = all
	return nil
}

func (r *reader) open(instance int) error {
	r.instance = instance
	f, err := os.Open(r.s.path(r.name, instance))
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	r.f = f
	return nil
}

// next moves on from a drained, rotated file: to the rotated file that came
// after it, if the writer rotated again meanwhile, and then to the current
// file. (A follower more than one rotation behind loses the files in
// between: the store keeps only one.)
func (r *reader) next() error {
	path := r.s.path(r.name, r.instance)
	if old, err := os.Open(path + ".1"); err == nil {
		if !sameFile(old, r.f) {
			r.close()
			r.f = old
			if err := r.drain(); err != nil {
				return err
			}
		} else {
			old.Close()
		}
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil // between the rename and the new file: the next write wakes us
	}
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	r.close()
	r.f = f
	return nil
}

func sameFile(a, b *os.File) bool {
	x, err1 := a.Stat()
	y, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(x, y)
}

func (r *reader) close() {
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

// rotated reports whether the path now names another file than r.f.
func (r *reader) rotated() bool {
	a, err1 := os.Stat(r.s.path(r.name, r.instance))
	b, err2 := r.f.Stat()
	if err1 != nil || err2 != nil {
		return false
	}
	return !os.SameFile(a, b)
}

// drain sends what r.f holds beyond what was sent.
func (r *reader) drain() error {
	if r.f == nil {
		return nil
	}
	buf := make([]byte, r.chunk)
	for {
		n, err := r.f.Read(buf)
		if n > 0 {
			if err := r.send(append([]byte(nil), buf[:n]...)); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("logs: %w", err)
		}
	}
}

func (r *reader) sendAll(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), r.chunk)
		if err := r.send(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// tailLines keeps the last n lines of b (a final line without newline
// counts as a line).
func tailLines(b []byte, n int64) []byte {
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := int64(0); i < n; i++ {
		j := bytes.LastIndexByte(b[:end], '\n')
		if j < 0 {
			return b
		}
		end = j
	}
	return b[end+1:]
}
