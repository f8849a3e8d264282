package redisserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// ErrNotInstalled is returned by Start when no redis-server is on PATH.
var ErrNotInstalled = errors.New("redis-server not found on PATH")

// Server is a running Redis server, external process or embedded.
type Server struct {
	addr     string
	embedded bool

	cmd    *exec.Cmd
	exited chan struct{}
	mini   *miniredis.Miniredis

	closeOnce sync.Once
}

// Option adjusts how a server is started.
type Option func(*options)

type options struct {
	logger *slog.Logger
	binary string
	output io.Writer
}

// WithLogger sets the logger for start-up and fallback messages
// (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithBinary names the redis-server executable (default: "redis-server" on PATH).
func WithBinary(path string) Option { return func(o *options) { o.binary = path } }

// WithOutput receives the server's own log (default: discarded).
func WithOutput(w io.Writer) Option { return func(o *options) { o.output = w } }

func buildOptions(opts []Option) options {
	o := options{logger: slog.Default(), binary: "redis-server", output: io.Discard}
	for _, fn := range opts {
		fn(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	return o
}

// startTimeout bounds how long a fresh redis-server may take to answer PING.
const startTimeout = 10 * time.Second

// Start runs redis-server on 127.0.0.1 with a free port. dir, when not empty,
// is where the server keeps its append-only file (created if missing).
// ctx bounds the start-up only; the server runs until Close.
func Start(ctx context.Context, dir string, opts ...Option) (*Server, error) {
	o := buildOptions(opts)
	bin, err := exec.LookPath(o.binary)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNotInstalled, err)
	}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("redis state dir %s: %w", dir, err)
		}
	}
	// A port found free can be taken before redis-server binds it; a few
	// attempts make that race harmless.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		srv, err := startOnce(ctx, bin, dir, o)
		if err == nil {
			o.logger.Info("redis-server started", "addr", srv.addr, "dir", dir)
			return srv, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, bin, dir string, o options) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--protected-mode", "yes",
		"--save", "",
		"--daemonize", "no",
	}
	if dir != "" {
		args = append(args, "--dir", dir, "--appendonly", "yes", "--appendfsync", "everysec")
	} else {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command(bin, args...)
	dieWithParent(cmd)
	cmd.Stdout = o.output
	cmd.Stderr = o.output
	if dir != "" {
		cmd.Dir = dir
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	srv := &Server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(srv.exited) }()

	if err := srv.waitReady(ctx); err != nil {
		srv.Close()
		return nil, err
	}
	return srv, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	for {
		if err := c.Ping(ctx).Err(); err == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("redis-server on %s exited during start-up (port taken?)", s.addr)
		case <-ctx.Done():
			return fmt.Errorf("redis-server on %s did not answer PING within %s: %w", s.addr, startTimeout, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartEmbedded serves the Redis protocol from inside this process
// (miniredis) on 127.0.0.1 with a free port. It logs a warning, because the
// embedded server is not a real Redis (see the package doc).
func StartEmbedded(opts ...Option) (*Server, error) {
	o := buildOptions(opts)
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	o.logger.Warn("!!! no redis-server on PATH: using the EMBEDDED Redis-protocol server (miniredis) — "+
		"fine for trying podvisor, not for real use; install redis-server or pass --redis-url",
		"addr", m.Addr())
	return &Server{addr: m.Addr(), embedded: true, mini: m}, nil
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return s.addr }

// URL is the redis:// URL of the server, ready for redis.ParseURL.
func (s *Server) URL() string { return "redis://" + s.addr + "/0" }

// Embedded reports whether this is the in-process fallback.
func (s *Server) Embedded() bool { return s.embedded }

// Close stops the server and waits for it to exit. It is safe to call twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.mini != nil {
			s.mini.Close()
			return
		}
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	})
}

// String describes the server for logs.
func (s *Server) String() string {
	kind := "redis-server"
	if s.embedded {
		kind = "embedded"
	}
	return strings.Join([]string{kind, s.addr}, " ")
}
