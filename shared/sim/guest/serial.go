package guest

import (
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
type serialLine struct {
	addr string
	// tls, when set, is how the port's connection is made (a ssl:// URI).
	tls    *tls.Config
	master *os.File
	slave  *os.File // held open so the line stays up while the agent reopens it
	log    *slog.Logger
	// redial is how long after a connection ended (or failed) the next is
	// tried.
	redial time.Duration

	mu     sync.Mutex
	conn   net.Conn
	cut    bool
	closed bool
	wake   chan struct{} // a cut was lifted, or the line closed
	wg     sync.WaitGroup
}

// serialAddr is the TCP address of a network serial port's service URI
// ("tcp://host:port", "tcp4://…", "tcp6://…" or "host:port"; with TLS
// "ssl://…", "tcp+ssl://…", "tcp4+ssl://…", "tcp6+ssl://…"), or an error
// naming what the simulated hosts cannot connect to (telnet).
func serialAddr(uri string) (addr string, withTLS bool, err error) {
	for _, scheme := range []string{"tcp://", "tcp4://", "tcp6://"} {
		if rest, ok := strings.CutPrefix(uri, scheme); ok {
			return rest, false, nil
		}
	}
	for _, scheme := range []string{"ssl://", "tcp+ssl://", "tcp4+ssl://", "tcp6+ssl://"} {
		if rest, ok := strings.CutPrefix(uri, scheme); ok {
			return rest, true, nil
		}
	}
	if strings.Contains(uri, "://") {
		return "", false, errors.New("network serial port " + uri + ": the simulated hosts connect TCP and TLS over TCP only")
	}
	return uri, false, nil
}

// openSerialLine makes the guest's serial device and starts connecting it
// to uri, or leaves it cut until setCut(false) when cut is set; a TLS
// address's certificate must chain to roots.
func openSerialLine(uri string, roots *x509.CertPool, cut bool, log *slog.Logger) (*serialLine, error) {
	addr, withTLS, err := serialAddr(uri)
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
	l := &serialLine{addr: addr, tls: tlsConf, master: master, slave: slave, log: log, redial: 200 * time.Millisecond, wake: make(chan struct{}, 1), cut: cut}
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
		c, err := l.dial()
		if err != nil {
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
		_, err = io.Copy(l.master, c)
		l.mu.Lock()
		if l.conn == c {
			l.conn = nil
		}
		l.mu.Unlock()
		c.Close()
		l.log.Debug("serial port: connection ended", "addr", l.addr, "err", err)
		l.pause()
	}
}

// dial makes one connection to the port's address.
func (l *serialLine) dial() (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	if l.tls != nil {
		return tls.DialWithDialer(d, "tcp", l.addr, l.tls)
	}
	return d.Dial("tcp", l.addr)
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
// old host's.
func (l *serialLine) route(string) {
	l.mu.Lock()
	defer l.mu.Unlock()
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
