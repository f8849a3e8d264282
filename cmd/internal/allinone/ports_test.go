package allinone

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A restart of up with port flags of 0 hands out the previous run's
// addresses again; a remembered port that is taken now moves, alone, and
// up's output says so; an explicit port wins over the memory.
func TestRestartKeepsItsAddresses(t *testing.T) {
	cfg := Config{StateDir: t.TempDir(), Clusters: 1, HostsPerCluster: 1, Seed: 1, GuestChannel: GuestChannelSerial}
	first, _ := upOnce(t, cfg)
	second, out := upOnce(t, cfg)
	if !maps.Equal(first, second) {
		t.Fatalf("restart moved addresses:\nfirst  %v\nsecond %v", first, second)
	}
	if strings.Contains(out, "moved") {
		t.Errorf("nothing moved, but up says so:\n%s", out)
	}

	listenOn(t, first["NATS"])
	ui, err := freePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg.UIPort, cfg.ExplicitPorts = ui, []string{"--ui-port"} // given: it wins over the memory
	third, out := upOnce(t, cfg)
	for part, addr := range first {
		switch moved := third[part] != addr; {
		case part == "NATS" && !moved:
			t.Errorf("NATS kept %s, which another listener holds", addr)
		case part == "status page" && third[part] != net.JoinHostPort("127.0.0.1", strconv.Itoa(ui)):
			t.Errorf("status page on %s, want --ui-port %d", third[part], ui)
		case part != "NATS" && part != "status page" && moved:
			t.Errorf("%s moved from %s to %s, though its port was free", part, addr, third[part])
		}
	}
	for _, want := range []string{
		"NATS moved from " + first["NATS"] + " to " + third["NATS"] + " (port " + portString(first["NATS"]) + " is taken now): guest cluster workers",
		"status page moved from " + first["status page"] + " to " + third["status page"] + " (as --ui-port says)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("up's output lacks %q:\n%s", want, out)
		}
	}
}

// With a port flag set, as up's defaults are, and its port taken, a
// restart falls back to the previous run's port rather than to a fresh one
// each time; when that one is taken too, the move names both ports.
func TestRestartKeepsAFallbackPort(t *testing.T) {
	held := listenOn(t, "127.0.0.1:0")
	flag := portOf(held.Addr().String())
	cfg := Config{StateDir: t.TempDir(), Clusters: 1, HostsPerCluster: 1, Seed: 1, GuestChannel: GuestChannelSerial, RegistryPort: flag}
	first, _ := upOnce(t, cfg)
	if portOf(first["registry"]) == flag {
		t.Fatalf("registry on %s, which another listener holds", first["registry"])
	}
	second, out := upOnce(t, cfg)
	if second["registry"] != first["registry"] {
		t.Errorf("registry moved from %s to %s, though --registry-port %d is still taken and %s was free",
			first["registry"], second["registry"], flag, first["registry"])
	}
	if strings.Contains(out, "moved") {
		t.Errorf("nothing moved, but up says so:\n%s", out)
	}

	listenOn(t, second["registry"])
	third, out := upOnce(t, cfg)
	want := "registry moved from " + second["registry"] + " to " + third["registry"] +
		" (port " + portString(second["registry"]) + " and port " + strconv.Itoa(flag) + " are taken now): image references"
	if !strings.Contains(out, want) {
		t.Errorf("up's output lacks %q:\n%s", want, out)
	}

	// The default port free again: the address handed out last stays
	// (clients hold it); only a port the user gives moves it.
	held.Close()
	if fourth, out := upOnce(t, cfg); fourth["registry"] != third["registry"] || strings.Contains(out, "moved") {
		t.Errorf("with the default port free again, the registry went from %s to %s:\n%s", third["registry"], fourth["registry"], out)
	}
}

// listenOn holds addr for the rest of the test.
func listenOn(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// upOnce starts up on cfg, prints its endpoints and stops it: the
// addresses it handed out, by part, and what it printed.
func upOnce(t *testing.T, cfg Config) (map[string]string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out bytes.Buffer
	s.PrintEndpoints(&out, "env", 0)
	e := s.Endpoints
	addrs := map[string]string{"NATS": urlHost(t, e.NATSURL), "vCenter": urlHost(t, e.VCenterURL),
		"registry": e.Registry, "status page": urlHost(t, e.UIURL)}
	if !s.redis.Embedded() { // the stand-in Redis has no port to keep
		addrs["Redis"] = urlHost(t, e.RedisURL)
	}
	if s.Concentrator != "" { // only while guests run
		addrs["concentrator"] = urlHost(t, s.Concentrator)
	}
	return addrs, out.String()
}

func urlHost(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		t.Fatalf("%q: no host:port (%v)", raw, err)
	}
	return u.Host
}

func portString(addr string) string { return strconv.Itoa(portOf(addr)) }

// A missing ports file is a first run; an unusable one is said, and
// forgotten.
func TestPortsFileTolerance(t *testing.T) {
	for _, tt := range []struct {
		name, content string // content "" means no file
		want          map[string]int
		complaint     string
	}{
		{"missing", "", map[string]int{}, ""},
		{"kept", `{"nats": 4222, "ui": 8080}`, map[string]int{"nats": 4222, "ui": 8080}, ""},
		{"corrupt", `{"nats": 42`, map[string]int{}, "unexpected end of JSON input"},
		{"null", `null`, map[string]int{}, "not a JSON object"},
		{"no port", `{"nats": 70000}`, map[string]int{}, "nats: port 70000 is not a TCP port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.content != "" {
				if err := os.WriteFile(filepath.Join(dir, portsFileName), []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b := loadPortBook(dir, slog.New(slog.DiscardHandler))
			if !maps.Equal(b.prev, tt.want) {
				t.Errorf("remembered %v, want %v", b.prev, tt.want)
			}
			said := strings.Join(b.notes, "\n")
			if tt.complaint == "" && said != "" || !strings.Contains(said, tt.complaint) {
				t.Errorf("up says %q, want it to say %q", said, tt.complaint)
			}
			if tt.complaint != "" && !strings.Contains(said, "is corrupt or unreadable") {
				t.Errorf("up says %q, not that the ports file is corrupt", said)
			}
		})
	}
}

// A port flag given whose port is taken is said, even when the part keeps
// the previous run's port or has none before it (a first run).
func TestATakenGivenPortIsSaid(t *testing.T) {
	for _, prev := range []map[string]int{{"registry": 33617}, nil} {
		b := &portBook{log: slog.New(slog.DiscardHandler), prev: prev, now: map[string]int{}, explicit: []string{"--registry-port"}}
		b.use(partRegistry, "127.0.0.1", 44327, 33617)
		if want := "registry listens on 127.0.0.1:33617: --registry-port 44327 is taken now"; len(b.notes) != 1 || b.notes[0] != want {
			t.Errorf("previous ports %v: notes %q, want %q", prev, b.notes, want)
		}
		// Given and had: nothing to say.
		b = &portBook{log: slog.New(slog.DiscardHandler), prev: prev, now: map[string]int{}, explicit: []string{"--registry-port"}}
		if b.use(partRegistry, "127.0.0.1", 33617, 33617); len(b.notes) != 0 {
			t.Errorf("previous ports %v: notes %q for a port given and had", prev, b.notes)
		}
	}
}
