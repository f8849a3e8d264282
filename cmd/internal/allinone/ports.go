package allinone

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
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

// portOf is the port of a host:port address (0 when it has none).
func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// portsFileName is the file in the state dir that remembers the ports the
// last successful `up` on it listened on. Addresses outlive the process that
// handed them out: a guest cluster's worker VM keeps the NATS URL in its
// user data, native VM and pod records keep image references to the
// registry's host:port, CLI contexts and sourced env files keep every URL.
// So a port flag of 0 means "the port the previous run used, if it is still
// free", not "any port", and a restart hands out the same addresses.
//
// Format: one JSON object from part to TCP port, written atomically
// (temporary file, then rename) once every part listens:
//
//	{"concentrator": 41213, "nats": 39421, "nats-1": 39422, "redis": 40007,
//	 "registry": 44133, "ui": 37851, "vcenter": 36011}
//
// Keys are portPart.key ("nats" is the single server or the first node of
// a cluster, "nats-<i>" node i). A part this run did not start (an external
// endpoint replaced it) keeps its entry. A missing file is a first run; an
// unreadable or corrupt one is reported and every part gets a fresh port.
const portsFileName = "ports.json"

// portPart is a server of up whose port is remembered: key in the ports
// file, name and flag in what up prints, and breaks, what a client that
// kept the old address loses when the port moves.
type portPart struct {
	key, name, flag, breaks string
}

// reSource is what every moved address asks of the user.
const reSource = "source the env file again"

var (
	partNATS = portPart{"nats", "NATS", "--nats-port",
		"guest cluster workers keep the old URL in their VM user data and drop out of their clusters; " +
			"CLI contexts and `podvisor serve` processes keep it too; " + reSource + " and set CLI contexts again (podvisor config set-context NAME --from-env)"}
	partVCenter = portPart{"vcenter", "vCenter simulator", "--vcenter-port",
		"GOVC_URL of sourced env files and `podvisor serve` processes started with them point at the old port; " + reSource}
	partRegistry = portPart{"registry", "registry", "--registry-port",
		"image references to the old address in native VM and pod records no longer pull; " + reSource}
	partUI      = portPart{"ui", "status page", "--ui-port", "bookmarks and PODVISOR_UI_URL point at the old port; " + reSource}
	partRedis   = portPart{"redis", "Redis", "", "PODVISOR_REDIS_URL of sourced env files and `podvisor serve` processes points at the old port; " + reSource}
	partChannel = portPart{"concentrator", "guest channel concentrator", "", "the channel URI `podvisor serve` provisioners and pod VMs' serial ports were given points at the old port; " + reSource}
)

// natsNodePart is node i of an embedded NATS cluster.
func natsNodePart(i int) portPart {
	if i == 0 {
		return partNATS
	}
	p := partNATS
	p.key, p.name = fmt.Sprintf("nats-%d", i), fmt.Sprintf("NATS node %d", i)
	return p
}

// portBook is the ports file of one run: what the previous run used, what
// this one uses, and what moved (said in up's output).
type portBook struct {
	path  string
	log   *slog.Logger
	prev  map[string]int
	now   map[string]int
	notes []string
}

// loadPortBook reads the ports file of stateDir. It never fails: without a
// usable file every part simply gets a fresh port.
func loadPortBook(stateDir string, log *slog.Logger) *portBook {
	b := &portBook{path: filepath.Join(stateDir, portsFileName), log: log, prev: map[string]int{}, now: map[string]int{}}
	raw, err := os.ReadFile(b.path)
	if errors.Is(err, os.ErrNotExist) {
		return b
	}
	if err == nil {
		err = json.Unmarshal(raw, &b.prev)
	}
	if err == nil && b.prev == nil {
		err = errors.New("not a JSON object")
	}
	for k, p := range b.prev {
		if err == nil && (p < 1 || p > 65535) {
			err = fmt.Errorf("%s: port %d is not a TCP port", k, p)
		}
	}
	if err != nil {
		b.prev = map[string]int{}
		b.note(fmt.Sprintf("the previous run's ports are lost (%s is corrupt or unreadable: %v): every port flag of 0 gets a fresh port, so addresses handed out before may stop working", b.path, err))
	}
	return b
}

// want is the port to try for part: the flag when set (it always wins),
// else the previous run's port (0 when there was none: any).
func (b *portBook) want(p portPart, flag int) int {
	if flag != 0 {
		return flag
	}
	return b.prev[p.key]
}

// use records that part listens on host:port now, and says so when that
// is not where the previous run had it.
func (b *portBook) use(p portPart, host string, flag, port int) {
	b.now[p.key] = port
	old, ok := b.prev[p.key]
	if !ok || old == port {
		return
	}
	why := fmt.Sprintf("port %d is taken now", b.want(p, flag))
	if flag == port {
		why = "as " + p.flag + " says"
	}
	b.note(fmt.Sprintf("%s moved from %s to %s (%s): %s", p.name,
		net.JoinHostPort(host, strconv.Itoa(old)), net.JoinHostPort(host, strconv.Itoa(port)), why, p.breaks))
}

func (b *portBook) note(msg string) {
	b.log.Warn(msg)
	b.notes = append(b.notes, msg)
}

// save writes the ports of this run over the previous run's, atomically.
func (b *portBook) save() error {
	all := map[string]int{}
	maps.Copy(all, b.prev)
	maps.Copy(all, b.now)
	raw, err := json.Marshal(all)
	if err != nil {
		return err
	}
	if err := writeStateFile(b.path, append(raw, '\n')); err != nil {
		return fmt.Errorf("up: remember ports: %w", err)
	}
	return nil
}
