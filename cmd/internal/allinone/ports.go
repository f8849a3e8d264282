package allinone

import (
	"fmt"
	"net"
	"strconv"
)

// listenPreferred listens on host:port, or on a free port when that port is
// taken (or port is 0), so that `podvisor up` starts on a busy machine too;
// the env file always says where things ended up.
func listenPreferred(host string, port int) (net.Listener, error) {
	if port != 0 {
		if ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port))); err == nil {
			return ln, nil
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", host, err)
	}
	return ln, nil
}

// freePort returns port when it can be bound on host, else a free one. The
// port is released before return, so a caller that binds it later can race
// with another process; it is used only for servers that take an address
// rather than a listener.
func freePort(host string, port int) (int, error) {
	ln, err := listenPreferred(host, port)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
