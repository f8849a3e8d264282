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
// the next) writes dir/<container>/<n>.log in the CRI log format, a record
// a line: `<time> stdout <P|F> <text>`, the time (RFC 3339, UTC, to the
// nanosecond) the piece was written, F for a piece that ends its line, P
// for one that does not (the rest of a line not yet written, or all of a
// write that holds no newline). stdout and stderr share one pipe, in write
// order, so every record says stdout. A record is written whole, with one
// write, so a file never ends in the middle of one that is done, and a
// line begun before a rotation goes on in the next file as its own record.
// A read sends the texts, the container's bytes as it wrote them; asked
// for timestamps, each line prefixed with its first piece's time and a
// space (as the kubelet does); since a time, only lines whose first piece
// was written then or later; a limit of bytes, no more than that of what
// it sends. A follow that crosses a restart begins the new instance's
// output on a line of its own: the ended instance's unfinished line (it
// died in the middle of one) ends with a newline. A line of a file an agent
// wrote before the format is read as a line without a time (before any
// since, sent without a timestamp), its last line too though no newline
// ends it; only a line with a record's stream and tag is taken for a
// record, not a raw one that starts with a time. A file that grows past
// the size limit is renamed <n>.log.1 (replacing an older one) and a new
// one begun, so an instance keeps at most twice the limit, and a container
// keeps the files of two instances, the current one and the one before:
// --previous reads no further back (as the kubelet keeps one dead
// container).
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
	"time"

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

// Write appends p's records, rotating first when the file is full.
func (w *Writer) Write(p []byte) (int, error) {
	rec := records(time.Now(), p)
	if w.size > 0 && w.size+int64(len(rec)) > w.s.maxBytes {
		if err := w.rotate(); err != nil {
			return 0, fmt.Errorf("logs: rotate: %w", err)
		}
	}
	n, err := w.f.Write(rec)
	w.size += int64(n)
	w.s.mu.Lock()
	w.s.ctr(w.name).broadcast()
	w.s.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("logs: %w", err)
	}
	return len(p), nil
}

// rotate moves the full file to <n>.log.1 and begins a new one. The path
// names a file all along, the full one and then the new one (a link, then
// renames over the old names), so a reader opening it never finds none.
func (w *Writer) rotate() error {
	path := w.s.path(w.name, w.instance)
	_ = os.Remove(path + ".old")
	if err := os.Link(path, path+".old"); err != nil {
		return err
	}
	if err := os.Rename(path+".old", path+".1"); err != nil {
		return err
	}
	f, err := os.OpenFile(path+".new", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if err := os.Rename(path+".new", path); err != nil {
		f.Close()
		return err
	}
	w.f.Close()
	w.f, w.size = f, 0
	return nil
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
	// Timestamps prefixes every line sent with the time its first byte
	// was written and a space.
	Timestamps bool
	// Since, when not zero, leaves out the lines whose first byte was
	// written before it (after TailLines has picked the lines).
	Since time.Time
	// LimitBytes, when > 0, ends the read once that many bytes are sent
	// (timestamps included; the last line may be cut), a follow too.
	LimitBytes int64
}

// ChannelRequest is what a guest channel's logs request asks the store
// to read, once the request is valid (guestchannel.LogsRequest.Validate).
func ChannelRequest(req guestchannel.LogsRequest) Request {
	r := Request{Follow: req.Follow, Previous: req.Previous, TailLines: req.TailLines, FromEnd: req.FromEnd,
		Timestamps: req.Timestamps, LimitBytes: req.LimitBytes}
	if req.SinceTime != nil {
		r.Since = *req.SinceTime
	}
	return r
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
	if req.LimitBytes < 0 {
		return nil, fmt.Errorf("logs: limitBytes %d: must not be negative", req.LimitBytes)
	}
	dec := decoder{timestamps: req.Timestamps, since: req.Since, left: -1}
	if req.LimitBytes > 0 {
		dec.left = req.LimitBytes
	}
	rd := &Reading{s: s, name: name, follow: req.Follow, r: reader{s: s, name: name, dec: dec}}
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
// after, until ctx ends, the container will not start again, the store
// closes, or the limit of bytes is reached.
func (rd *Reading) Send(ctx context.Context, chunk int, send func([]byte) error) error {
	rd.r.chunk, rd.r.send = chunk, send
	defer rd.r.close()
	if err := rd.sendAll(ctx); !errors.Is(err, errLimitReached) {
		return err
	}
	return nil
}

func (rd *Reading) sendAll(ctx context.Context) error {
	s, name, r := rd.s, rd.name, &rd.r
	if err := r.emit(r.pending); err != nil {
		return err
	}
	r.pending = nil
	if !rd.follow {
		if err := r.drain(); err != nil {
			return err
		}
		return r.finish(false)
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
			// drained the ended instance; go on with the newest, on a
			// line of its own
			if err := r.drain(); err != nil {
				return err
			}
			if err := r.finish(true); err != nil {
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
			return r.finish(false)
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
	// offset: records.
	pending []byte
	dec     decoder
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
	var old []byte
	if f, err := os.Open(r.s.path(r.name, instance) + ".1"); err == nil {
		// In the middle of a rotation both names are the full file.
		if !sameFile(f, r.f) {
			old, _ = io.ReadAll(f)
		}
		f.Close()
	}
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
		return nil // no file yet: the next write wakes us
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
			if err := r.emit(buf[:n]); err != nil {
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

// errLimitReached ends a read that has sent Request.LimitBytes.
var errLimitReached = errors.New("logs: limit of bytes reached")

// emit sends what records b hold, as the request asks.
func (r *reader) emit(b []byte) error { return r.out(r.dec.decode(b)) }

// finish sends the end of a file that will not grow (decoder.end).
func (r *reader) finish(endLine bool) error { return r.out(r.dec.end(endLine)) }

// out sends out in chunks.
func (r *reader) out(out []byte) error {
	for len(out) > 0 {
		n := min(len(out), r.chunk)
		if err := r.send(out[:n]); err != nil {
			return err
		}
		out = out[n:]
	}
	if r.dec.left == 0 {
		return errLimitReached
	}
	return nil
}

// timeFormat is a record's time, and the timestamp a read sends: RFC 3339
// to the nanosecond, fixed width, as the kubelet writes it.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// records are the CRI log records of p, written at t: one a line, the
// last one partial (P) when p does not end with a newline.
func records(t time.Time, p []byte) []byte {
	ts := t.UTC().AppendFormat(nil, timeFormat)
	out := make([]byte, 0, len(p)+(len(ts)+10)*(bytes.Count(p, []byte{'\n'})+1))
	for len(p) > 0 {
		line, rest, full := bytes.Cut(p, []byte{'\n'})
		out = append(out, ts...)
		if full {
			out = append(out, " stdout F "...)
		} else {
			out = append(out, " stdout P "...)
		}
		out = append(append(out, line...), '\n')
		p = rest
	}
	return out
}

// record is one parsed record (without its newline).
type record struct {
	t    time.Time
	text []byte
	full bool // it ends its line
}

// parseRecord reads a record; a line that is not one (a file of an agent
// that kept raw bytes) is a whole line without a time. Only a line with a
// record's stream and tag is one: a raw line may well begin with a time and
// two words (a program's own log line).
func parseRecord(line []byte) record {
	raw := record{text: line, full: true}
	ts, rest, _ := bytes.Cut(line, []byte{' '})
	stream, rest, _ := bytes.Cut(rest, []byte{' '})
	tag, text, ok := bytes.Cut(rest, []byte{' '})
	// A tag may carry more after a colon (as CRI allows); P or F before it.
	kind, _, _ := bytes.Cut(tag, []byte{':'})
	if !ok || (string(stream) != "stdout" && string(stream) != "stderr") || (string(kind) != "P" && string(kind) != "F") {
		return raw
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return raw
	}
	return record{t: t, text: text, full: string(kind) == "F"}
}

// decoder turns records into what a read sends.
type decoder struct {
	timestamps bool
	since      time.Time
	left       int64 // bytes still to send; -1: no limit
	carry      []byte
	midLine    bool // the last record did not end its line
	skip       bool // the line under way began before since
}

// decode returns the output of the records in b; a record not yet whole
// (no newline) waits in d.carry for the rest.
func (d *decoder) decode(b []byte) []byte {
	if len(d.carry) > 0 {
		b = append(d.carry, b...)
		d.carry = nil
	}
	var out []byte
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		out = d.record(out, parseRecord(b[:i]))
		b = b[i+1:]
	}
	if len(b) > 0 {
		d.carry = append([]byte(nil), b...)
	}
	return d.limit(out)
}

// record appends r's output to out.
func (d *decoder) record(out []byte, r record) []byte {
	if !d.midLine {
		d.skip = !d.since.IsZero() && r.t.Before(d.since)
		// A raw line has no time to show.
		if !d.skip && d.timestamps && !r.t.IsZero() {
			out = append(r.t.UTC().AppendFormat(out, timeFormat), ' ')
		}
	}
	if !d.skip {
		out = append(out, r.text...)
		if r.full {
			out = append(out, '\n')
		}
	}
	d.midLine = !r.full
	return out
}

// end returns the output of the end of a file that will not grow. What
// waits in d.carry is its last line, which no newline ends (a raw file's:
// records are written whole), sent as it is. With endLine, another
// instance's output follows: a line left unfinished ends with a newline
// (when it was sent), and the next line begins afresh.
func (d *decoder) end(endLine bool) []byte {
	var out []byte
	if len(d.carry) > 0 {
		r := parseRecord(d.carry)
		r.full = false
		out = d.record(out, r)
		d.carry = nil
	}
	if endLine {
		if d.midLine && !d.skip {
			out = append(out, '\n')
		}
		d.midLine, d.skip = false, false
	}
	return d.limit(out)
}

// limit cuts out to the bytes still to send.
func (d *decoder) limit(out []byte) []byte {
	if d.left >= 0 {
		out = out[:min(int64(len(out)), d.left)]
		d.left -= int64(len(out))
	}
	return out
}

// tailLines keeps the records of the last n lines of b (a final line
// without its end yet counts as a line, as does a raw file's last line that
// no newline ends).
func tailLines(b []byte, n int64) []byte {
	var starts []int // where each line's first record begins
	lineStart := true
	for off := 0; off < len(b); {
		if lineStart {
			starts = append(starts, off)
		}
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			break
		}
		lineStart = parseRecord(b[off : off+i]).full
		off += i + 1
	}
	if int64(len(starts)) <= n {
		return b
	}
	return b[starts[len(starts)-int(n)]:]
}
