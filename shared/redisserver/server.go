package redisserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/agent/forkthread"
	"github.com/podvisor/podvisor/shared/redisclient"
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
	tls    *TLSFiles
	users  []User

	closeOnce sync.Once
}

// Option adjusts how a server is started.
type Option func(*options)

type options struct {
	logger *slog.Logger
	binary string
	output io.Writer
	tls    *TLSFiles
	users  []User
	port   int
}

// TLSFiles are the server's certificate and key and the CA that signed
// them (clients verify against it; the server asks clients for no
// certificate).
type TLSFiles struct{ CertFile, KeyFile, CAFile string }

// User is one Redis ACL user: its password and its ACL rules (for example
// "~* &* +@all", or "~* +@read +@connection" for a reader).
type User struct {
	Name, Password, Rules string
}

// Reader and Writer are the ACL rules of the two kinds of podvisor users:
// the image cache writes its metadata; the scheduler only reads it.
const (
	RulesWriter = "~* &* +@all -@admin -@dangerous"
	RulesReader = "~* -@all +@read +@connection -@dangerous"
	// RulesProbe may only PING: what a readiness probe needs.
	RulesProbe = "-@all +ping"
)

// DeploymentUsers are the Redis users of a Kubernetes deployment, without
// passwords (WriteACL makes them): the image cache reads and writes, the
// scheduler and the dashboard only read, the readiness probe only PINGs.
func DeploymentUsers() []User {
	return []User{
		{Name: "imagecache", Rules: RulesWriter},
		{Name: "scheduler", Rules: RulesReader},
		{Name: "dashboard", Rules: RulesReader},
		{Name: "probe", Rules: RulesProbe},
	}
}

// WriteACL writes dir/users.acl (mode 0600): the password-less default
// user off, and each user on with its password and rules. A user without a
// password gets a random one, written to dir/<name>-password (mode 0600),
// which is what its client reads (PODVISOR_REDIS_PASSWORD_FILE). It
// returns the ACL file's path.
func WriteACL(dir string, users ...User) (string, error) {
	var b strings.Builder
	b.WriteString("user default off\n")
	for _, u := range users {
		if u.Password == "" {
			raw := make([]byte, 24)
			if _, err := rand.Read(raw); err != nil {
				return "", fmt.Errorf("redis ACL: password of %s: %w", u.Name, err)
			}
			u.Password = hex.EncodeToString(raw)
			if err := os.WriteFile(filepath.Join(dir, u.Name+"-password"), []byte(u.Password+"\n"), 0o600); err != nil {
				return "", fmt.Errorf("redis ACL: password of %s: %w", u.Name, err)
			}
		}
		fmt.Fprintf(&b, "user %s on >%s %s\n", u.Name, u.Password, u.Rules)
	}
	acl := filepath.Join(dir, "users.acl")
	if err := os.WriteFile(acl, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("redis ACL file: %w", err)
	}
	return acl, nil
}

// WithTLS serves TLS only (no plain-text port).
func WithTLS(f TLSFiles) Option { return func(o *options) { o.tls = &f } }

// WithUsers turns off the password-less default user and creates these
// users from an ACL file (mode 0600 in the server's dir: passwords never
// appear on a command line).
func WithUsers(users ...User) Option { return func(o *options) { o.users = users } }

// WithLogger sets the logger for start-up and fallback messages
// (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithBinary names the redis-server executable (default: "redis-server" on PATH).
func WithBinary(path string) Option { return func(o *options) { o.binary = path } }

// WithPort listens on this port instead of a free one (a client started
// before its server, in tests of waiting for it).
func WithPort(port int) Option { return func(o *options) { o.port = port } }

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
	port := o.port
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--protected-mode", "yes",
		"--save", "",
		"--daemonize", "no",
	}
	if o.tls != nil {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(port),
			"--tls-cert-file", o.tls.CertFile, "--tls-key-file", o.tls.KeyFile, "--tls-ca-cert-file", o.tls.CAFile,
			"--tls-auth-clients", "no")
	}
	if len(o.users) > 0 {
		if dir == "" {
			return nil, errors.New("redis users need a state dir for their ACL file")
		}
		acl, err := WriteACL(dir, o.users...)
		if err != nil {
			return nil, err
		}
		args = append(args, "--aclfile", acl)
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
	if err := forkthread.Start(cmd); err != nil { // dieWithParent follows the forking thread
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	srv := &Server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd, exited: make(chan struct{}), tls: o.tls, users: o.users}
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
	opts, err := redisclient.Options(s.URLFor(""), s.caFile())
	if err != nil {
		return err
	}
	opts.MaxRetries, opts.DialTimeout = -1, 200*time.Millisecond
	c := redis.NewClient(opts)
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

// URL is the URL of the server as its first user (see URLFor), ready for
// redisclient.Options.
func (s *Server) URL() string { return s.URLFor("") }

// URLFor is the URL of the server as user name ("" for the first user, or
// no user when the server has none): rediss:// when it serves TLS.
func (s *Server) URLFor(name string) string {
	u := url.URL{Scheme: "redis", Host: s.addr, Path: "/0"}
	if s.tls != nil {
		u.Scheme = "rediss"
	}
	for _, x := range s.users {
		if name == "" || x.Name == name {
			u.User = url.UserPassword(x.Name, x.Password)
			break
		}
	}
	return u.String()
}

func (s *Server) caFile() string {
	if s.tls == nil {
		return ""
	}
	return s.tls.CAFile
}

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
