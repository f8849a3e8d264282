package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Cost is what the pipeline phase cost per pod, whatever the machine's
// load: the JetStream messages stored (each one a write the server syncs to
// disk before it acknowledges it, the embedded server running with
// sync_interval always) and the CPU time spent.
type Cost struct {
	// WritesPerPod is the messages stored in every stream (events and KV
	// writes, delete markers included) during the pipeline phase, divided by
	// the pods applied. Consumer state (acknowledgement floors, written at
	// most ten times a second per consumer) and the tombstones of removed
	// messages are not counted.
	WritesPerPod float64 `json:"writes_per_pod"`
	// Streams is the messages per pod of each stream that took any.
	Streams map[string]float64 `json:"streams"`
	// StreamBytes is what each stream holds once the pipeline ends, in
	// bytes (a KV bucket's stream: every revision it keeps of every key).
	StreamBytes map[string]uint64 `json:"stream_bytes,omitempty"`
	// CPUMSPerPod is the bench process's CPU time (user + system) during the
	// pipeline phase divided by the pods applied: the services, NATS and the
	// simulator when they share the process (not with --services-apart).
	CPUMSPerPod float64 `json:"cpu_ms_per_pod"`
	// RedisCPUMSPerPod is the same for the redis-server process, when found.
	RedisCPUMSPerPod float64 `json:"redis_cpu_ms_per_pod,omitempty"`
}

// costMeter snapshots the stream sequences and CPU times before the pods go
// out; done computes the cost per pod since then.
type costMeter struct {
	js       jetstream.JetStream
	seqs     map[string]uint64
	cpu      time.Duration
	redisPID string
	redisCPU time.Duration
}

func startCost(ctx context.Context, js jetstream.JetStream) (*costMeter, error) {
	m := &costMeter{js: js, cpu: selfCPU(), redisPID: redisPID()}
	if m.redisPID != "" {
		m.redisCPU, _ = procCPU(m.redisPID)
	}
	var err error
	m.seqs, _, err = streamSeqs(ctx, js)
	return m, err
}

func (m *costMeter) done(ctx context.Context, pods int) (Cost, error) {
	cpu := selfCPU() - m.cpu
	c := Cost{Streams: map[string]float64{}}
	if pods <= 0 {
		return c, nil
	}
	c.CPUMSPerPod = float64(cpu.Microseconds()) / 1000 / float64(pods)
	if m.redisPID != "" {
		if r, err := procCPU(m.redisPID); err == nil {
			c.RedisCPUMSPerPod = float64((r - m.redisCPU).Microseconds()) / 1000 / float64(pods)
		}
	}
	after, bytes, err := streamSeqs(ctx, m.js)
	if err != nil {
		return c, err
	}
	c.StreamBytes = bytes
	var total uint64
	for name, seq := range after {
		if d := seq - m.seqs[name]; d > 0 {
			total += d
			c.Streams[name] = float64(d) / float64(pods)
		}
	}
	c.WritesPerPod = float64(total) / float64(pods)
	return c, nil
}

// streamSeqs is each stream's last sequence (how many messages it stored
// since it was made) and the bytes it holds.
func streamSeqs(ctx context.Context, js jetstream.JetStream) (seqs, bytes map[string]uint64, err error) {
	seqs, bytes = map[string]uint64{}, map[string]uint64{}
	l := js.ListStreams(ctx)
	for info := range l.Info() {
		seqs[info.Config.Name] = info.State.LastSeq
		bytes[info.Config.Name] = info.State.Bytes
	}
	if err := l.Err(); err != nil {
		return nil, nil, fmt.Errorf("list streams: %w", err)
	}
	return seqs, bytes, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads utime + stime of /proc/<pid>/stat.
func procCPU(pid string) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0, err
	}
	// Fields after the command, which sits in parentheses and may hold spaces.
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok {
		return 0, fmt.Errorf("/proc/%s/stat: no command field", pid)
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(f))
	}
	// utime and stime are the 14th and 15th fields of the line, 12th and
	// 13th after the command, in clock ticks (100 a second on Linux).
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%s/stat: %w", pid, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// redisPID finds the all-in-one's redis-server among this process's
// children; "" when there is none.
func redisPID() string {
	self := strconv.Itoa(os.Getpid())
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndex(s, ") ")
		if i < 0 || !strings.Contains(s[:i], "(redis-server") {
			continue
		}
		if f := strings.Fields(s[i+2:]); len(f) > 1 && f[1] == self {
			return d.Name()
		}
	}
	return ""
}

// streamsByCost lists the streams of c, most messages per pod first.
func (c Cost) streamsByCost() []string {
	names := make([]string, 0, len(c.Streams))
	for n := range c.Streams {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if c.Streams[a] != c.Streams[b] {
			if c.Streams[a] > c.Streams[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return names
}
