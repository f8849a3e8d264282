package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dial connects to the channel at addr once; the agent retries with
// back-off around it.
func Dial(ctx context.Context, addr string) (io.ReadWriteCloser, error) {
	kind, rest, _ := strings.Cut(addr, ":")
	switch kind {
	case "unix":
		if rest == "" {
			return nil, fmt.Errorf("channel %q: unix needs a socket path", addr)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", rest)
		if err != nil {
			return nil, fmt.Errorf("channel %s: %w", addr, err)
		}
		return c, nil
	case "vsock":
		cid, port, err := ParseVsock(rest)
		if err != nil {
			return nil, fmt.Errorf("channel %q: %w", addr, err)
		}
		return dialVsock(cid, port)
	case "serial":
		if !strings.HasPrefix(rest, "/") {
			return nil, fmt.Errorf("channel %q: serial needs a device path such as /dev/ttyS1", addr)
		}
		return OpenSerial(rest)
	default:
		return nil, fmt.Errorf("channel %q: kind %q is not unix, vsock or serial", addr, kind)
	}
}

// ParseVsock reads "<cid>:<port>".
func ParseVsock(s string) (cid, port uint32, err error) {
	c, p, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("vsock address %q: want <cid>:<port>", s)
	}
	c64, err := strconv.ParseUint(c, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("vsock cid %q: %w", c, err)
	}
	p64, err := strconv.ParseUint(p, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("vsock port %q: %w", p, err)
	}
	return uint32(c64), uint32(p64), nil
}

// dialVsock connects a stream socket to cid:port. The net package knows no
// AF_VSOCK, so the connected descriptor is wrapped as an *os.File, which
// still uses the runtime's poller.
func dialVsock(cid, port uint32) (io.ReadWriteCloser, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("channel vsock:%d:%d: socket: %w", cid, port, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: cid, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("channel vsock:%d:%d: connect: %w", cid, port, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("channel vsock:%d:%d: %w", cid, port, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d:%d", cid, port)), nil
}

// OpenSerial opens a serial port in raw mode: the framed protocol's bytes
// pass unchanged (no echo, no newline translation, no line editing, no
// signals from control characters).
func OpenSerial(dev string) (io.ReadWriteCloser, error) {
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("channel serial:%s: %w", dev, err)
	}
	if err := MakeRaw(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("channel serial:%s: %w", dev, err)
	}
	return os.NewFile(uintptr(fd), dev), nil
}

// MakeRaw puts the terminal fd in raw mode at 115200 baud (what cfmakeraw
// does), discarding anything received before.
func MakeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("get terminal attributes: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | unix.B115200
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("set raw mode: %w", err)
	}
	return unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
}
