package guest

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/transport"
	"github.com/podvisor/podvisor/shared/vspc"
)

// serialLine is a VM's network serial port, as a vSphere host presents
// one whose backing is a URI with direction client
// (VirtualSerialPortURIBackingInfo): the guest has a serial device (here a
// pseudo-terminal, raw, whose name the agent is given as its channel,
// "serial:/dev/pts/N"), and the hypervisor connects the port to the
// backing's address over TCP, connecting again whenever the connection
// ends. The guest's end stays open all along: the guest cannot see the
// connection come and go (the host side's resync tells its agent).
// Relocation makes the connection again from the new host; a failed host
// has none until it is back. What the guest writes while no connection is
// up is lost, as on a real port.
//
// A port behind a proxy (a telnet:// or telnets:// URI, the backing's
// ProxyURI) is connected with the VMware telnet extension, naming the VM
// (vspc.Dial), and a relocation moves it as a vMotion does: the old host
// asks the proxy (VMOTION-BEGIN), the new host's connection joins the line
// (VMOTION-PEER) and takes it over (VMOTION-COMPLETE), so the line the
// proxy serves never ends.
type serialLine struct {
	addr string
	// tls, when set, is how the port's connection is made (a ssl:// URI).
	tls *tls.Config
	// proxy: the port is connected to a proxy (vSPC) as id.
	proxy  bool
	id     vspc.Identity
	master *os.File
	slave  *os.File // held open so the line stays up while the agent reopens it
	log    *slog.Logger
	// redial is how long after a connection ended (or failed) the next is
	// tried.
	redial time.Duration

	mu     sync.Mutex
	conn   io.ReadWriteCloser
	cut    bool
	closed bool
	wake   chan struct{} // a cut was lifted, or the line closed
	wg     sync.WaitGroup
}

// serialAddr is the TCP address of a network serial port's service URI
// ("tcp://host:port", "tcp4://…", "tcp6://…" or "host:port"; with TLS
// "ssl://…", "tcp+ssl://…", "tcp4+ssl://…", "tcp6+ssl://…") or of its
// proxy ("telnet://host:port", with TLS "telnets://…"), or an error naming
// what the simulated hosts cannot connect to.
func serialAddr(uri string) (addr string, withTLS, proxy bool, err error) {
	for _, scheme := range []string{"tcp://", "tcp4://", "tcp6://"} {
		if rest, ok := strings.CutPrefix(uri, scheme); ok {
			return rest, false, false, nil
		}
	}
	for _, scheme := range []string{"ssl://", "tcp+ssl://", "tcp4+ssl://", "tcp6+ssl://"} {
		if rest, ok := strings.CutPrefix(uri, scheme); ok {
			return rest, true, false, nil
		}
	}
	if rest, ok := strings.CutPrefix(uri, "telnet://"); ok {
		return rest, false, true, nil
	}
	if rest, ok := strings.CutPrefix(uri, "telnets://"); ok {
		return rest, true, true, nil
	}
	if strings.Contains(uri, "://") {
		return "", false, false, errors.New("network serial port " + uri + ": the simulated hosts connect TCP, TLS over TCP and telnet proxies only")
	}
	return uri, false, false, nil
}

// portIdentity is what a host says of vm to its port's proxy.
func portIdentity(vm VM) vspc.Identity {
	return vspc.Identity{Direction: 'S', ServiceURI: vm.SerialService, VCUUID: vm.UUID, Name: vm.Name}
}

// openSerialLine makes the guest's serial device and starts connecting it
// to uri (a proxy's as id), or leaves it cut until setCut(false) when cut
// is set; a TLS address's certificate must chain to roots.
func openSerialLine(uri string, id vspc.Identity, roots *x509.CertPool, cut bool, log *slog.Logger) (*serialLine, error) {
	addr, withTLS, proxy, err := serialAddr(uri)
	if err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if withTLS {
		if roots == nil {
			return nil, errors.New("network serial port " + uri + ": the simulated hosts were given no CA to check its certificate with")
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		tlsConf = &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
	}
	ptm, slave, err := pty.Open()
	if err != nil {
		return nil, err
	}
	master, err := pollable(ptm)
	if err != nil {
		slave.Close()
		return nil, err
	}
	// Raw from the start, so nothing the host side sends before the
	// agent opens the device is echoed back or translated.
	if err := transport.MakeRaw(int(slave.Fd())); err != nil {
		master.Close()
		slave.Close()
		return nil, err
	}
	l := &serialLine{addr: addr, tls: tlsConf, proxy: proxy, id: id, master: master, slave: slave, log: log,
		redial: 200 * time.Millisecond, wake: make(chan struct{}, 1), cut: cut}
	l.wg.Go(l.fromGuest)
	l.wg.Go(l.connect)
	return l, nil
}

// pollable returns f as a file in Go's poller, so that closing it ends a
// read in progress (close waits for the reader): a descriptor opened
// blocking is read in a thread a close does not wake. f is closed.
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// device is the guest's serial device.
func (l *serialLine) device() string { return l.slave.Name() }

// fromGuest sends what the guest writes to the connection that is up.
func (l *serialLine) fromGuest() {
	buf := make([]byte, 32<<10)
	for {
		n, err := l.master.Read(buf)
		if n > 0 {
			l.mu.Lock()
			c := l.conn
			l.mu.Unlock()
			if c != nil {
				_, _ = c.Write(buf[:n])
			}
		}
		if err != nil {
			return // closed
		}
	}
}

// connect keeps a connection up while the line is neither cut nor closed.
func (l *serialLine) connect() {
	for {
		l.mu.Lock()
		closed, cut := l.closed, l.cut
		l.mu.Unlock()
		if closed {
			return
		}
		if cut {
			<-l.wake
			continue
		}
		l.mu.Lock()
		c := l.conn // a vMotion's target connection, already up
		l.mu.Unlock()
		if c == nil {
			var err error
			if c, err = l.dial(); err != nil {
				l.log.Debug("serial port: no connection", "addr", l.addr, "err", err)
				l.pause()
				continue
			}
			l.mu.Lock()
			if l.closed || l.cut {
				l.mu.Unlock()
				c.Close()
				continue
			}
			l.conn = c
			l.mu.Unlock()
		}
		_, err := io.Copy(l.master, c)
		l.mu.Lock()
		moved := l.conn != nil && l.conn != c
		if l.conn == c {
			l.conn = nil
		}
		l.mu.Unlock()
		c.Close()
		if moved {
			continue // the port went on over the vMotion's target connection
		}
		l.log.Debug("serial port: connection ended", "addr", l.addr, "err", err)
		l.pause()
	}
}

// dial makes one connection to the port's address, opened with its proxy
// where it has one.
func (l *serialLine) dial() (io.ReadWriteCloser, error) {
	nc, err := l.dialTCP()
	if err != nil || !l.proxy {
		return nc, err
	}
	l.mu.Lock()
	id := l.id
	l.mu.Unlock()
	return vspc.Dial(nc, id, 5*time.Second)
}

// dialTCP connects to the port's address, over TLS where it says so.
func (l *serialLine) dialTCP() (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	if l.tls != nil {
		return tls.DialWithDialer(d, "tcp", l.addr, l.tls)
	}
	return d.Dial("tcp", l.addr)
}

// setIdentity is the VM the port belongs to from now on (a standby's port,
// taken over by a forked child).
func (l *serialLine) setIdentity(id vspc.Identity) {
	l.mu.Lock()
	l.id = id
	l.mu.Unlock()
}

// vmotionTimeout is how long a host waits for the proxy's answers during
// a vMotion (vSphere's default for VMOTION-GOAHEAD, serialN.vmotionLimit).
const vmotionTimeout = 5 * time.Second

// vmotion moves the port's connection to the new host as vSphere does
// with a proxy: asked on the old connection, joined by the new one, which
// then takes the line over. If the proxy does not agree the line is made
// again from the new host, as a port without a proxy is.
func (l *serialLine) vmotion(old *vspc.HostConn) {
	seq := make([]byte, 8)
	_, _ = rand.Read(seq)
	secret, err := old.BeginVMotion(seq, vmotionTimeout)
	if err != nil {
		l.log.Warn("serial port: the proxy did not agree to the vMotion; the port connects again", "err", err)
		l.dropIf(old)
		return
	}
	next, err := l.dialPeer(seq, secret)
	if err != nil {
		_ = old.Abort(seq)
		l.log.Warn("serial port: the vMotion's target connection failed; the port connects again", "err", err)
		l.dropIf(old)
		return
	}
	l.mu.Lock()
	if l.conn != old || l.closed || l.cut {
		l.mu.Unlock()
		next.Close()
		return
	}
	l.conn = next
	l.mu.Unlock()
	if err := next.Complete(seq); err != nil {
		l.dropIf(next)
	}
	// The proxy closes the old connection; connect goes on reading next.
}

// dialPeer makes the vMotion target's connection.
func (l *serialLine) dialPeer(seq, secret []byte) (*vspc.HostConn, error) {
	nc, err := l.dialTCP()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	id := l.id
	l.mu.Unlock()
	return vspc.DialPeer(nc, id, seq, secret, vmotionTimeout)
}

// dropIf ends c if it is still the port's connection.
func (l *serialLine) dropIf(c io.ReadWriteCloser) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == c {
		l.dropLocked()
	}
}

// pause waits before the next connection, or until the line changes.
func (l *serialLine) pause() {
	select {
	case <-time.After(l.redial):
	case <-l.wake:
	}
}

func (l *serialLine) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// dropLocked ends the connection that is up; connect makes the next.
func (l *serialLine) dropLocked() {
	if l.conn != nil {
		_ = l.conn.Close()
		l.conn = nil
	}
}

// route: the VM runs on another host now, whose connection replaces the
// old host's; behind a proxy, by a vMotion of the port.
func (l *serialLine) route(string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if hc, ok := l.conn.(*vspc.HostConn); ok && l.proxy {
		go l.vmotion(hc)
		return
	}
	l.dropLocked()
}

// setCut cuts the line (host failure) or restores it.
func (l *serialLine) setCut(cut bool) {
	l.mu.Lock()
	l.cut = cut
	if cut {
		l.dropLocked()
	}
	l.mu.Unlock()
	l.poke()
}

// close ends the connection and the device.
func (l *serialLine) close() {
	l.mu.Lock()
	l.closed = true
	l.dropLocked()
	l.mu.Unlock()
	l.poke()
	_ = l.master.Close()
	_ = l.slave.Close()
	l.wg.Wait()
}

// connections is 1 while the port is connected.
func (l *serialLine) connections() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		return 1
	}
	return 0
}
