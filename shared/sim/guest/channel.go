package guest

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"
)

// HostSocket is the host agent socket of host in the channel directory:
// where a guest's channel is routed while its VM runs on that host.
func HostSocket(channelDir, host string) string {
	return filepath.Join(channelDir, host+".sock")
}

// guestChannel is how a guest reaches its host side: the hypervisor's
// socket (channel) or a network serial port (serialLine).
type guestChannel interface {
	// route follows the VM to another host.
	route(host string)
	// setCut cuts the channel (host failure) or restores it.
	setCut(cut bool)
	close()
	connections() int
}

// channel is the simulated hypervisor's side of one guest's channel, as
// vsock is on a real host: the guest dials channel.sock in its directory
// and each connection is forwarded to the host agent of the host the VM is
// on now. Nothing listening there, a failed host or a frozen guest: the
// connection is closed and the guest dials again later.
type channel struct {
	ln         net.Listener
	channelDir string
	log        *slog.Logger

	mu     sync.Mutex
	host   string
	cut    bool // host failed: no connection gets through
	conns  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup
}

type pair struct{ guest, host net.Conn }

func (p *pair) close() {
	_ = p.guest.Close()
	_ = p.host.Close()
}

// openChannel listens on path and forwards to the host's socket.
func openChannel(path, channelDir, host string, log *slog.Logger) (*channel, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	c := &channel{ln: ln, channelDir: channelDir, host: host, log: log, conns: map[*pair]struct{}{}}
	c.wg.Go(c.accept)
	return c, nil
}

func (c *channel) accept() {
	for {
		g, err := c.ln.Accept()
		if err != nil {
			return // closed
		}
		c.mu.Lock()
		host, cut, closed := c.host, c.cut, c.closed
		c.mu.Unlock()
		if cut || closed {
			_ = g.Close()
			continue
		}
		h, err := net.DialTimeout("unix", HostSocket(c.channelDir, host), time.Second)
		if err != nil {
			c.log.Debug("guest channel: no host agent listening", "host", host, "err", err)
			_ = g.Close()
			continue
		}
		p := &pair{guest: g, host: h}
		c.mu.Lock()
		if c.closed || c.cut || c.host != host {
			// Moved, cut or closed while dialing: this route is stale.
			c.mu.Unlock()
			p.close()
			continue
		}
		c.conns[p] = struct{}{}
		c.mu.Unlock()
		c.wg.Go(func() { c.forward(p) })
	}
}

// forward copies both ways until either side closes, then closes both.
func (c *channel) forward(p *pair) {
	var once sync.Once
	done := make(chan struct{})
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			c.log.Debug("guest channel: copy ended", "err", err)
		}
		once.Do(func() { close(done) })
	}
	go cp(p.host, p.guest)
	go cp(p.guest, p.host)
	<-done
	p.close()
	c.mu.Lock()
	delete(c.conns, p)
	c.mu.Unlock()
}

// route points the channel at another host (relocation) and closes the
// connections of the old route, as a migrated VM's vsock connections end.
func (c *channel) route(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.host == host {
		return
	}
	c.host = host
	c.dropLocked()
}

// setCut cuts the channel (host failure) or restores it.
func (c *channel) setCut(cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = cut
	if cut {
		c.dropLocked()
	}
}

func (c *channel) dropLocked() {
	for p := range c.conns {
		p.close()
		// Gone now, not once its forwarder has noticed: a cut channel
		// counts no connection from the moment it is cut.
		delete(c.conns, p)
	}
}

// close stops listening, ends every connection and waits for the
// forwarders.
func (c *channel) close() {
	c.mu.Lock()
	c.closed = true
	c.dropLocked()
	c.mu.Unlock()
	_ = c.ln.Close()
	c.wg.Wait()
}

// connections counts the forwarded connections (for tests and status).
func (c *channel) connections() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}
