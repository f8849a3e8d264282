package hostagent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
)

// podConn is one accepted guest channel: a pod's agent that said hello and
// was found to belong to a pod of this host.
type podConn struct {
	conn  *guestchannel.Conn
	hello guestchannel.Hello
	pod   *events.PodRecord // as read at hello: spec, images, identity
	log   *slog.Logger
	// serial is set on a channel from the concentrator (a network serial
	// port): frames that do not decode are skipped, and a hello of another
	// boot ends the session with rehello.
	serial  bool
	rehello *guestchannel.Hello
	// answered receives when a serial line says its hello again (answers).
	answered chan struct{}
	line     *line // the concentrator's view of the line (serveGreeted)

	mu      sync.Mutex
	status  guestchannel.Status                     // merged: Containers/InitContainers complete so far
	byName  map[string]guestchannel.ContainerStatus // merged container states
	pending map[string]*pendingRequest              // by request id
	// gone is closed with the channel: every request waiting on it ends.
	gone   chan struct{}
	closed bool

	// latest is the newest report not yet published; wake signals it.
	latest *events.PodContainersReported
	wake   chan struct{}
}

// serveConn runs one guest channel: hello, then status reports and answers
// until the channel closes.
func (s *Service) serveConn(ctx context.Context, conn *guestchannel.Conn) {
	defer conn.Close()
	pc, err := s.greet(ctx, conn)
	if err != nil {
		s.log.Warn("guest channel refused", "err", err)
		_ = conn.Send(guestchannel.TypeError, "", guestchannel.Error{Message: err.Error()})
		return
	}
	s.servePod(ctx, pc)
}

// serveGreeted runs a channel whose hello the concentrator read and
// checked, and whose pod it found placed on this host, until it closes
// (nil) or the guest says hello anew on the line (that hello: a guest that
// booted again, for which the concentrator checks and routes the channel
// again). The concentrator closes the line.
// When l.moved is set the pod was placed elsewhere since: the line's read
// was interrupted for it, and the session ends with the hello it had, to be
// routed again.
func (s *Service) serveGreeted(ctx context.Context, conn *guestchannel.Conn, h guestchannel.Hello, rec *events.PodRecord, l *line) *guestchannel.Hello {
	pc := s.newPodConn(conn, h, rec)
	// A serial line carries what the guest's console or a half-sent frame
	// left on it; a frame that does not decode is skipped, not the end of
	// the channel.
	pc.serial, pc.line = true, l
	s.servePod(ctx, pc)
	return pc.rehello
}

// servePod serves an admitted channel until it closes.
func (s *Service) servePod(ctx context.Context, pc *podConn) {
	conn := pc.conn
	s.mu.Lock()
	old := s.conns[pc.hello.PodUID]
	s.mu.Unlock()
	if old != nil && old.serial && pc.serial && old.hello.BootID == pc.hello.BootID && old.answers(probeTimeout) {
		// A second line saying the same boot's hello while the first still
		// answers is not the pod's VM reconnecting (its old line would be
		// dead): whoever read the pod's token from the VM's configuration
		// must not take the line over.
		pc.log.Warn("guest channel refused: the pod's line of this boot still answers", "boot", pc.hello.BootID)
		_ = conn.Send(guestchannel.TypeError, "", guestchannel.Error{Message: "the pod's channel of this boot is connected on another line"})
		return
	}
	s.mu.Lock()
	if old := s.conns[pc.hello.PodUID]; old != nil {
		// The agent reconnected (or a relocation brought it back): the old
		// channel is dead even if the kernel has not said so yet.
		old.conn.Close()
	}
	s.conns[pc.hello.PodUID] = pc
	s.mu.Unlock()
	pc.log.Info("guest connected", "boot", pc.hello.BootID, "agent", pc.hello.AgentVersion)

	pubDone := make(chan struct{})
	go func() { defer close(pubDone); s.publishLoop(ctx, pc) }()
	switch {
	case pc.hello.KeyRequest != nil && pc.serial:
		// A line through the concentrator does not prove it comes from the
		// VM: whoever reads the VM's configuration knows everything its
		// hello says. A disk key goes only where the hypervisor puts the
		// line (provisioner: pods asking for one fail where channels are
		// network serial ports).
		pc.log.Warn("disk key not asked for: the channel is a network serial port")
		_ = pc.conn.Send(guestchannel.TypeDiskKey, "", guestchannel.DiskKey{
			Error: "encrypted ephemeral disks are not available where channels are network serial ports"})
	case pc.hello.KeyRequest != nil:
		go s.forwardKeyRequest(ctx, pc)
	}
	defer func() {
		s.mu.Lock()
		if s.conns[pc.hello.PodUID] == pc {
			delete(s.conns, pc.hello.PodUID)
		}
		s.mu.Unlock()
		pc.close()
		<-pubDone
		pc.log.Info("guest disconnected")
	}()
	for {
		env, err := conn.Receive()
		if errors.Is(err, guestchannel.ErrMalformedFrame) && pc.serial {
			pc.log.Warn("guest channel: a frame that does not decode skipped", "err", err)
			continue
		}
		if err != nil && pc.line != nil {
			var ne net.Error
			switch {
			case pc.line.moved.Load():
				pc.log.Info("guest channel: the pod moved to another host; its line is routed again")
				pc.rehello = &pc.hello
				return
			case errors.As(err, &ne) && ne.Timeout():
				// A deadline meant for an earlier session on this line:
				// the frame read in part is kept (guestchannel.Conn).
				_ = pc.line.nc.SetReadDeadline(time.Time{})
				continue
			}
		}
		if err != nil {
			return
		}
		switch env.Type {
		case guestchannel.TypeStatus:
			var st guestchannel.Status
			if err := env.Decode(&st); err != nil {
				pc.log.Warn("malformed status", "err", err)
				continue
			}
			pc.apply(st)
		case guestchannel.TypeHello:
			if pc.serial {
				// A serial line's hellos: the answer to the concentrator's
				// resync (the same boot), or a guest that booted again on
				// a line that stayed connected, whose channel starts anew.
				var h guestchannel.Hello
				if env.Decode(&h) == nil && (h.BootID != pc.hello.BootID || h.PodUID != pc.hello.PodUID) {
					pc.rehello = &h
					return
				}
				select { // the line answers (answers)
				case pc.answered <- struct{}{}:
				default:
				}
				continue
			}
			pc.log.Warn("second hello on one channel ignored")
		default:
			if env.ID != "" {
				pc.deliver(env)
				continue
			}
			if env.Type == guestchannel.TypeError {
				var e guestchannel.Error
				_ = env.Decode(&e)
				pc.log.Warn("agent error", "message", e.Message)
				continue
			}
			_ = conn.Send(guestchannel.TypeError, env.ID, guestchannel.Error{Message: "host agent: unknown message type " + env.Type})
		}
	}
}

// greet reads the hello and checks it against the pod records: the pod must
// exist, have that uid and be placed on this host.
func (s *Service) greet(ctx context.Context, conn *guestchannel.Conn) (*podConn, error) {
	type result struct {
		env guestchannel.Envelope
		err error
	}
	got := make(chan result, 1)
	go func() {
		env, err := conn.Receive()
		got <- result{env, err}
	}()
	var r result
	select {
	case r = <-got:
	case <-time.After(s.cfg.HelloTimeout):
		return nil, fmt.Errorf("no hello within %s", s.cfg.HelloTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, fmt.Errorf("read hello: %w", r.err)
	}
	var h guestchannel.Hello
	if r.env.Type != guestchannel.TypeHello {
		return nil, fmt.Errorf("first message is %q, want hello", r.env.Type)
	}
	if err := r.env.Decode(&h); err != nil {
		return nil, err
	}
	if h.PodUID == "" || h.BootID == "" {
		return nil, errors.New("hello without pod uid or boot id")
	}
	rec, err := s.findPod(ctx, h)
	if err != nil {
		return nil, err
	}
	if rec.Host != s.cfg.Host {
		return nil, fmt.Errorf("pod %s (uid %s) is placed on %q, not this host %s: %w", rec.Key(), h.PodUID, rec.Host, s.cfg.Host, ErrRefused)
	}
	return s.newPodConn(conn, h, rec), nil
}

func (s *Service) newPodConn(conn *guestchannel.Conn, h guestchannel.Hello, rec *events.PodRecord) *podConn {
	return &podConn{
		conn:    conn,
		hello:   h,
		pod:     rec,
		log:     s.log.With("pod", rec.Key(), "uid", rec.UID),
		byName:  map[string]guestchannel.ContainerStatus{},
		pending: map[string]*pendingRequest{},
		gone:    make(chan struct{}),
		wake:    make(chan struct{}, 1),

		answered: make(chan struct{}, 1),
	}
}

// probeTimeout is how long a serial line has to answer a resync before a
// newer line of the same boot replaces it.
const probeTimeout = 2 * time.Second

// answers asks a serial line for its hello again and reports whether it
// answers within timeout: a live line does, a dead one (its guest's
// connection remade elsewhere, its end not yet closed) does not.
func (pc *podConn) answers(timeout time.Duration) bool {
	select {
	case <-pc.answered:
	default:
	}
	if pc.conn.Send(guestchannel.TypeResync, "", nil) != nil {
		return false
	}
	select {
	case <-pc.answered:
		return true
	case <-pc.gone:
		return false
	case <-time.After(timeout):
		return false
	}
}

// findPod finds the record of the hello's pod: directly when the agent
// named it, else by a search of the bucket for the uid.
func (s *Service) findPod(ctx context.Context, h guestchannel.Hello) (*events.PodRecord, error) {
	if h.Namespace == events.TemplateNamespace && h.Name != "" {
		// A template's guest: no pod record. On a host's socket it runs
		// on that host; through the concentrator, route found its host
		// first (templateHost) and asks that host's agent. Its containers
		// are the ones it reports.
		return &events.PodRecord{Namespace: h.Namespace, Name: h.Name, UID: h.PodUID, Host: s.cfg.Host, VMName: h.Name}, nil
	}
	if h.Namespace != "" && h.Name != "" {
		rec, err := s.record(ctx, h.Namespace, h.Name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("pod %s/%s (uid %s) has no record: %w", h.Namespace, h.Name, h.PodUID, ErrRefused)
		}
		if err != nil {
			return nil, err
		}
		if rec.UID != h.PodUID {
			return nil, fmt.Errorf("pod %s/%s has uid %s, the guest says %s: %w", h.Namespace, h.Name, rec.UID, h.PodUID, ErrRefused)
		}
		return rec, nil
	}
	lister, err := s.pods.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list pod records: %w", err)
	}
	defer lister.Stop()
	for key := range lister.Keys() {
		ns, name, _ := cutKey(key)
		if rec, err := s.record(ctx, ns, name); err == nil && rec.UID == h.PodUID {
			return rec, nil
		}
	}
	return nil, fmt.Errorf("no pod has uid %s: %w", h.PodUID, ErrRefused)
}

// templateHost is the host a pod VM template runs on, from the
// provisioner's record of the template (KV pod-templates). A template has
// no pod record, and a line through the concentrator does not say which
// host it comes from; without a record nothing says where the template
// runs, so its line is refused.
func (s *Service) templateHost(ctx context.Context, name string) (string, error) {
	s.templatesMu.Lock()
	kv := s.templates
	if kv == nil {
		var err error
		if kv, err = s.bus.KV(ctx, events.BucketPodTemplates); err != nil {
			s.templatesMu.Unlock()
			return "", fmt.Errorf("%s bucket: %w", events.BucketPodTemplates, err)
		}
		s.templates = kv
	}
	s.templatesMu.Unlock()
	e, err := kv.Get(ctx, name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", fmt.Errorf("template %s has no record in %s: %w", name, events.BucketPodTemplates, ErrRefused)
	}
	if err != nil {
		return "", fmt.Errorf("template %s: %w", name, err)
	}
	var r events.PodTemplatePlacement
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return "", fmt.Errorf("template record %s: %w", name, err)
	}
	if r.Shape.Host == "" {
		return "", fmt.Errorf("template %s: its record names no host: %w", name, ErrRefused)
	}
	return r.Shape.Host, nil
}

func cutKey(key string) (string, string, bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == '.' {
			return key[:i], key[i+1:], true
		}
	}
	return "", key, false
}

// apply merges a status into the connection's view and queues a report.
func (pc *podConn) apply(st guestchannel.Status) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if st.Full {
		pc.byName = map[string]guestchannel.ContainerStatus{}
	}
	for _, c := range append(st.InitContainers, st.Containers...) {
		pc.byName[c.Name] = c
	}
	pc.status.Seq, pc.status.Phase, pc.status.Reason, pc.status.Message = st.Seq, st.Phase, st.Reason, st.Message
	r := report(pc.pod, pc.hello, pc.status, pc.byName)
	if len(r.ContainerStatuses) == 0 {
		return // a template's guest that has named no container yet
	}
	pc.latest = r
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// pendingRequest is a request sent to the agent whose answers are awaited.
type pendingRequest struct {
	answers chan guestchannel.Envelope
	// quit is closed when the requester stops reading.
	quit chan struct{}
}

// request registers a new request id; its answers arrive on the returned
// channel until done(id) or the channel closes (gone).
func (pc *podConn) request() (string, <-chan guestchannel.Envelope, error) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	r := &pendingRequest{answers: make(chan guestchannel.Envelope, 64), quit: make(chan struct{})}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed {
		return "", nil, ErrChannelClosed
	}
	pc.pending[id] = r
	return id, r.answers, nil
}

// done forgets a request.
func (pc *podConn) done(id string) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if r, ok := pc.pending[id]; ok {
		delete(pc.pending, id)
		close(r.quit)
	}
}

// deliver passes an answer to its request. It blocks while the request's
// buffer is full: a slow client slows this guest's channel rather than lose
// log or output bytes (a client that stops reading altogether is dropped by
// its keep-alive timeout, which ends the request).
func (pc *podConn) deliver(env guestchannel.Envelope) {
	pc.mu.Lock()
	r, ok := pc.pending[env.ID]
	pc.mu.Unlock()
	if !ok {
		return
	}
	select {
	case r.answers <- env:
	case <-r.quit:
	case <-pc.gone:
	}
}

// close ends the connection's requests and wakes its publisher.
func (pc *podConn) close() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed {
		return
	}
	pc.closed = true
	close(pc.gone)
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}
