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
	"slices"
	"strconv"
	"strings"
)

// listenPreferred listens on host at the first of ports it can bind (0s
// skipped), else on a free port, so that `podvisor up` starts on a busy
// machine too; the env file always says where things ended up.
func listenPreferred(host string, ports ...int) (net.Listener, error) {
	for _, port := range ports {
		if port == 0 {
			continue
		}
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

// freePort returns the first of ports that can be bound on host, else a
// free one. The port is released before return, so a caller that binds it
// later can race with another process; it is used only for servers that
// take an address rather than a listener.
func freePort(host string, ports ...int) (int, error) {
	ln, err := listenPreferred(host, ports...)
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
// last `up` on it listened on (saved once all its parts listen). Addresses outlive the
// process that handed them out: a guest cluster's worker VM keeps the NATS
// URL in its user data, native VM and pod records keep image references to
// the registry's host:port, CLI contexts and sourced env files keep every
// URL. So each part tries a port flag's port the user gave (it wins over
// the memory whenever it is free), then the port the previous run used,
// then the flag's default, then any: a run that found 5000 taken and moved
// to P takes P again, even once 5000 is free. Only a port taken now, or a
// flag given naming another free port, moves an address a previous run
// handed out.
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
// unreadable or corrupt one is reported and forgotten: a part gets its
// port flag's port when free, else a fresh one.
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
		"image references to the old address (pods, native VMs, VirtualMachineImages applied with it) no longer pull: apply them again with $PODVISOR_REGISTRY; " + reSource}
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
	path string
	log  *slog.Logger
	// explicit are the port flags the user gave (Config.ExplicitPorts).
	explicit []string
	prev     map[string]int
	now      map[string]int
	notes    []string
}

// loadPortBook reads the ports file of stateDir. It never fails: without a
// usable file a part gets its port flag's port when free, else a fresh one.
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
		b.note(fmt.Sprintf("the previous run's ports are lost (%s is corrupt or unreadable: %v): a part whose port flag is 0 or whose port is taken gets a fresh port, so addresses handed out before may stop working", b.path, err))
	}
	return b
}

// want is the ports to try for part, in order: a flag the user gave (it
// wins over the memory whenever it can be had), the previous run's port,
// then the flag's default (after the memory: a part that fell back to
// another port keeps it once the default is free again, since clients
// were handed that address). Any free port comes after them.
func (b *portBook) want(p portPart, flag int) []int {
	var ports []int
	add := func(port int) {
		if port != 0 && !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	if slices.Contains(b.explicit, p.flag) {
		add(flag)
	}
	add(b.prev[p.key])
	add(flag)
	return ports
}

// use records that part listens on host:port now, and says so when that
// is not where the previous run had it.
func (b *portBook) use(p portPart, host string, flag, port int) {
	b.now[p.key] = port
	old, ok := b.prev[p.key]
	if port != flag && slices.Contains(b.explicit, p.flag) && (!ok || old == port) {
		// A port the user asked for and did not get is said even when
		// nothing moved.
		b.note(fmt.Sprintf("%s listens on %s: %s %d is taken now", p.name, net.JoinHostPort(host, strconv.Itoa(port)), p.flag, flag))
		return
	}
	if !ok || old == port {
		return
	}
	why := "as " + p.flag + " says"
	if port != flag || !slices.Contains(b.explicit, p.flag) {
		// Every port want puts before the one taken was tried, and taken.
		var taken []string
		for _, t := range b.want(p, flag) {
			if t == port {
				break
			}
			taken = append(taken, fmt.Sprintf("port %d", t))
		}
		verb := " is"
		if len(taken) > 1 {
			verb = " are"
		}
		why = strings.Join(taken, " and ") + verb + " taken now"
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
