package serve

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/podvisor/podvisor/cmd/internal/buildinfo"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/health"
	"github.com/podvisor/podvisor/shared/redact"
	"github.com/podvisor/podvisor/shared/redisclient"
	"github.com/podvisor/podvisor/shared/telemetry"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Help is what `serve --help` says of the settings, for both executables.
const Help = `serve runs one podvisor service until SIGTERM or Ctrl-C, then drains its consumers.
Configuration comes only from the environment (and mounted secret files):
  PODVISOR_NATS_URL, PODVISOR_NATS_CREDS, PODVISOR_NATS_CA   NATS endpoint, the service's creds file
                                                  (or a directory holding <service>.creds), CA;
                                                  a server not reachable yet is waited for
  GOVC_URL, GOVC_USERNAME[_FILE], GOVC_PASSWORD[_FILE], GOVC_INSECURE   vCenter (waited for too)
  PODVISOR_REDIS_URL, PODVISOR_REDIS_PASSWORD_FILE, PODVISOR_REDIS_CA    Redis (the image cache
                                                  waits for it; the scheduler starts without it)
  PODVISOR_HEALTH_ADDR (default :8081)            /healthz /readyz /metrics
  PODVISOR_HEALTH_ADDR_FILE                       file to write the health server's address to (for up)
  PODVISOR_PROFILING (default false)              also serve the Go runtime's profiles on /debug/pprof/
  PODVISOR_STREAM_REPLICAS (default 1)            replicas of the streams and KV buckets declared
  PODVISOR_LOG_LEVEL, PODVISOR_LOG_FORMAT, OTEL_*
  dashboard only: PODVISOR_DASHBOARD_ADDR (default :8443), PODVISOR_DASHBOARD_TLS_CERT, _TLS_KEY (required),
                  PODVISOR_DASHBOARD_CLIENT_CA (users' client certificates; required off loopback),
                  PODVISOR_REDIS_URL optional (a read-only user: the image chains)
  hostagent only: PODVISOR_HOSTAGENT_HOST (a host, or a comma list served by this one process),
                  PODVISOR_HOSTAGENT_CHANNEL_DIR (where the hosts' guest channels arrive)
Variables that are unset are taken from the env file of the state dir when it exists,
so that 'podvisor serve NAME' works beside 'podvisor up --services=none'.`

// ErrSettings marks an error in the settings (a bad or missing value): the
// executables exit with status 2 on it, as on a bad flag.
var ErrSettings = errors.New("bad settings")

// Options are what the command line adds to the settings.
type Options struct {
	// StateDir is the state directory of a local `podvisor up`, whose env
	// file supplies the settings the environment leaves unset.
	StateDir string
	// NATSURL, when set, overrides PODVISOR_NATS_URL.
	NATSURL string
}

// Run runs the service named name until ctx ends, then drains it.
func Run(ctx context.Context, name string, o Options) error {
	spec, err := runner.Lookup(name)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSettings, err)
	}
	settings, local := o.envFileDefaults()
	return run(ctx, o, spec, settings, local)
}

// envFileDefaults reads the env file of a local `podvisor up`: the settings
// it supplies where the environment does not set them, and whether it
// supplied the NATS URL (the service then runs beside that `up`).
func (o Options) envFileDefaults() (settings config.Source, local bool) {
	vars, err := ReadEnvFile(o.StateDir + "/env")
	if err != nil {
		return config.Env(), false
	}
	if _, set := os.LookupEnv("PODVISOR_NATS_URL"); !set && vars["PODVISOR_NATS_URL"] != "" && o.NATSURL == "" {
		local = true
	}
	return config.Layered(config.Env(), config.Map(vars)), local
}

func run(ctx context.Context, o Options, spec runner.Spec, settings config.Source, local bool) error {
	logger, err := telemetry.LoggerFromEnv()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSettings, err)
	}
	// The Redis client's own messages (a failed dial) join the service's
	// structured log rather than standard error.
	redis.SetLogger(redisLog{logger.With("component", "redis-client")})
	tel, err := telemetry.Setup(ctx, telemetry.Options{Service: "podvisor-" + spec.Name})
	if err != nil {
		return err
	}
	defer tel.Shutdown(context.Background())
	buildinfo.Register()
	build := buildinfo.Get()
	logger.Info("starting", "service", spec.Name, "version", build.Version, "commit", build.Commit, "built", build.BuildDate)

	// A bad setting is reported before any connection is made. serve's own
	// settings come from settings too: the env file of a local `up` names
	// the replicas of the streams it declared.
	if spec.Check != nil {
		if err := spec.Check(settings); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrSettings, spec.Name, err)
		}
	}
	var profiling bool
	r := config.Read(settings)
	r.Bool("PODVISOR_PROFILING", &profiling)
	if err := r.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrSettings, err)
	}
	var topo []bus.TopologyOption
	if v, _ := settings("PODVISOR_STREAM_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 5 {
			return fmt.Errorf("%w: PODVISOR_STREAM_REPLICAS=%q: want a number of replicas from 1 to 5", ErrSettings, v)
		}
		topo = append(topo, bus.WithReplicas(n))
	}
	if local {
		settings = localRedisUser(settings, o.StateDir, spec.Name)
	}
	conf := bus.ConnConfigFrom(settings, "podvisor-"+spec.Name)
	if o.NATSURL != "" {
		conf.URL = o.NATSURL
	}
	if conf.URL == "" {
		// Set but empty in the environment: the env file's, as for an
		// unset one.
		if vars, err := ReadEnvFile(filepath.Join(o.StateDir, "env")); err == nil {
			conf.URL = vars["PODVISOR_NATS_URL"]
		}
	}
	if conf.URL == "" {
		return fmt.Errorf("%w: PODVISOR_NATS_URL is not set and %s/env (the env file of a local `podvisor up`) does not name it", ErrSettings, o.StateDir)
	}
	if local && conf.CredsFile != "" {
		// Beside a local `podvisor up`, the env file names the client's
		// creds; the service runs as its own identity, minted by up.
		if p := filepath.Join(o.StateDir, "nats-auth", spec.Name+".creds"); fileExists(p) {
			conf.CredsFile = p
		}
	}
	// A directory of creds files (a mounted Secret holding every
	// service's) gives each service its own: <dir>/<service>.creds.
	if st, err := os.Stat(conf.CredsFile); err == nil && st.IsDir() {
		conf.CredsFile = filepath.Join(conf.CredsFile, spec.Name+".creds")
	}
	b, err := dialRetrying(ctx, conf, logger)
	if err != nil {
		return err
	}
	defer b.Close()
	// Declaring streams takes the admin identity; a service that runs as
	// its own relies on `podvisor up` (or the deployment's admin) having
	// declared them, and fails on its first consumer if not.
	if who, _ := bus.CredsIdentity(conf.CredsFile); conf.CredsFile == "" || who == bus.IdentityAdmin {
		if err := b.EnsureTopology(ctx, topo...); err != nil {
			return err
		}
	}
	deps := runner.Deps{Settings: settings}
	deps.Bus, deps.Logger = b, logger
	checks := map[string]health.Check{
		"nats": func(context.Context) error {
			if st := b.Conn().Status(); st != nats.CONNECTED {
				return fmt.Errorf("connection %s", st)
			}
			return nil
		},
	}
	if spec.NeedsVSphere {
		cfg, err := vsphere.ConfigFrom(settings)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrSettings, err)
		}
		sess, err := connectVCenterRetrying(ctx, cfg, logger)
		if err != nil {
			return err
		}
		defer sess.Close(context.Background())
		deps.VSphere = sess
		checks["vcenter"] = func(ctx context.Context) error {
			_, err := sess.Client.SessionManager.UserSession(ctx)
			return err
		}
	}
	if url, _ := settings("PODVISOR_REDIS_URL"); spec.NeedsRedis || spec.WantsRedis && url != "" {
		// A service that only wants Redis (the scheduler's image
		// locality) starts without it: its client connects when Redis
		// is back.
		connect := redisFrom
		if spec.NeedsRedis {
			connect = func(settings config.Source) (*redis.Client, error) {
				return connectRedisRetrying(ctx, settings, logger)
			}
		}
		rdb, err := connect(settings)
		if err != nil {
			return err
		}
		defer rdb.Close()
		deps.Redis = rdb
		checks["redis"] = func(ctx context.Context) error { return rdb.Ping(ctx).Err() }
	}
	addr, _ := settings("PODVISOR_HEALTH_ADDR")
	if addr == "" {
		// In a container the probes expect the fixed port; beside a local
		// `podvisor up` several services share the machine, so each takes a
		// free loopback port (logged below).
		addr = ":8081"
		if local {
			addr = "127.0.0.1:0"
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health server on %s: %w", addr, err)
	}
	if f, _ := settings("PODVISOR_HEALTH_ADDR_FILE"); f != "" {
		// A process on a port of its own tells where it listens (up's
		// fault-injection run samples every process's /metrics).
		if err := os.WriteFile(f, []byte(ln.Addr().String()+"\n"), 0o640); err != nil {
			return fmt.Errorf("PODVISOR_HEALTH_ADDR_FILE: %w", err)
		}
	}
	hs := &health.Server{Addr: addr, Checks: checks, Metrics: tel.MetricsHandler(), Logger: logger, Profiling: profiling}

	logger.Info("serving", "service", spec.Name, "nats", conf.URL, "health", ln.Addr().String())
	grp, gctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return hs.Serve(gctx, ln) })
	grp.Go(func() error {
		if err := spec.Run(gctx, deps); err != nil {
			return err
		}
		if gctx.Err() == nil {
			return fmt.Errorf("service %s stopped on its own", spec.Name)
		}
		return nil
	})
	err = grp.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	logger.Info("stopped")
	return err
}

// dialRetrying connects to NATS, trying again while the server cannot be
// reached: a service started while NATS restarts (an upgrade, a node lost)
// waits for it, as a service already connected does, instead of exiting
// and being started again by its supervisor with a growing back-off. A
// refusal (bad credentials, a certificate not trusted) is final, as is a
// setting the connection cannot be made with.
func dialRetrying(ctx context.Context, conf bus.ConnConfig, log *slog.Logger) (*bus.Bus, error) {
	if err := conf.Validate(); err != nil {
		return nil, fmt.Errorf("bus: %w", err)
	}
	return untilReachable(ctx, log, "NATS", conf.URL, dialRetryable, func() (*bus.Bus, error) { return bus.Dial(ctx, conf) })
}

// connectVCenterRetrying logs in to vCenter, trying again while it cannot
// be reached (a vCenter restarting answers nothing, or 503 while its
// services start), for the same reason as dialRetrying. A refused login or
// an untrusted certificate is final.
func connectVCenterRetrying(ctx context.Context, cfg vsphere.Config, log *slog.Logger) (*vsphere.Session, error) {
	return untilReachable(ctx, log, "vCenter", cfg.URL, vcenterRetryable, func() (*vsphere.Session, error) { return vsphere.Connect(ctx, cfg) })
}

// connectRedisRetrying makes the Redis client and waits until the server
// answers PING, for the same reason as dialRetrying: the image cache reads
// Redis at its start (comparing it with the datastores) and would exit. A
// refused login, a command the ACL user may not run or an untrusted
// certificate is final.
func connectRedisRetrying(ctx context.Context, settings config.Source, log *slog.Logger) (*redis.Client, error) {
	rdb, err := redisFrom(settings)
	if err != nil {
		return nil, err
	}
	where, _ := settings("PODVISOR_REDIS_URL")
	if _, err := untilReachable(ctx, log, "Redis", where, redisRetryable, func() (struct{}, error) {
		return struct{}{}, rdb.Ping(ctx).Err()
	}); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis: %w", err)
	}
	return rdb, nil
}

// redisLog hands the Redis client's messages to the service's logger.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}

// redisRetryable reports whether a failed PING may succeed later: the
// network failed, or the server says it cannot answer yet (LOADING its data
// set, BUSY with a script, MASTERDOWN while a replica has lost its primary,
// TRYAGAIN); any other answer (WRONGPASS, NOAUTH, NOPERM) or a TLS refusal
// is final.
func redisRetryable(err error) bool {
	if untrusted(err) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	for _, notYet := range []string{"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"} {
		if strings.HasPrefix(err.Error(), notYet+" ") {
			return true
		}
	}
	return false
}

// untilReachable calls connect until it succeeds, fails in a way retryable
// says is final, or ctx ends; between attempts it waits retryFirst,
// doubling up to retryMax, and logs a warning naming what and where.
func untilReachable[T any](ctx context.Context, log *slog.Logger, what, where string, retryable func(error) bool, connect func() (T, error)) (T, error) {
	wait := retryFirst
	for {
		v, err := connect()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return v, err
		}
		log.Warn(what+" not reachable; trying again", "url", redact.URL(where), "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, err
		case <-t.C:
		}
		wait = min(2*wait, retryMax)
	}
}

// The first wait between connection attempts, doubling up to the last.
const (
	retryFirst = 500 * time.Millisecond
	retryMax   = 5 * time.Second
)

// untrusted reports a TLS refusal or a settings file that cannot be read:
// final for any connection.
func untrusted(err error) bool {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	var path *fs.PathError
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &verify) || errors.As(err, &path)
}

// dialRetryable reports whether a failed NATS connection may succeed
// later: anything but the server's or TLS's refusal, or a file of the
// settings (creds, CA) that cannot be read.
func dialRetryable(err error) bool {
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked), untrusted(err):
		return false
	}
	return true
}

// vcenterRetryable reports whether a failed vCenter login may succeed
// later: the network failed (nothing listening, a reset, a timeout) or the
// server is not serving yet (503); a SOAP fault (a refused login) or a TLS
// refusal is final.
func vcenterRetryable(err error) bool {
	if untrusted(err) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		strings.Contains(err.Error(), "503 Service Unavailable")
}

// localRedisUser gives a service beside a local `podvisor up` its own
// Redis ACL user: the env file's URL is the read-only user's, and up keeps
// each service user's password in the state dir. It returns the settings
// with that URL layered on top.
func localRedisUser(settings config.Source, stateDir, service string) config.Source {
	raw, _ := settings("PODVISOR_REDIS_URL")
	pw, err := os.ReadFile(filepath.Join(stateDir, "redis-"+service+"-password"))
	if raw == "" || err != nil {
		return settings
	}
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return settings
	}
	u.User = url.UserPassword(service, strings.TrimSpace(string(pw)))
	return config.Layered(config.Map(map[string]string{"PODVISOR_REDIS_URL": u.String()}), settings)
}

func redisFrom(settings config.Source) (*redis.Client, error) {
	raw, _ := settings("PODVISOR_REDIS_URL")
	if raw == "" {
		return nil, errors.New("PODVISOR_REDIS_URL is not set")
	}
	opts, err := redisclient.Options(raw, caOf(settings))
	if err != nil {
		return nil, fmt.Errorf("PODVISOR_REDIS_URL: %w", err)
	}
	if f, _ := settings("PODVISOR_REDIS_PASSWORD_FILE"); f != "" {
		pw, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("PODVISOR_REDIS_PASSWORD_FILE: %w", err)
		}
		opts.Password = strings.TrimSpace(string(pw))
	}
	return redis.NewClient(opts), nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func caOf(settings config.Source) string {
	ca, _ := settings("PODVISOR_REDIS_CA")
	return ca
}

// ReadEnvFile parses the `export KEY='value'` lines that `podvisor up` writes.
func ReadEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		vars[k] = unquoteShell(v)
	}
	return vars, sc.Err()
}

// unquoteShell reverses the single-quote quoting of the env file that
// allinone writes (see allinone.Endpoints.EnvFile).
func unquoteShell(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		return strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
	}
	return strings.Trim(v, `"`)
}

// DefaultStateDir is $PODVISOR_STATE_DIR, else ~/.podvisor.
func DefaultStateDir() string {
	if d := os.Getenv("PODVISOR_STATE_DIR"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".podvisor"
	}
	return filepath.Join(home, ".podvisor")
}
