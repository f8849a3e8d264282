package hostagent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/podstream"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/vspc"
)

// startConcentrator runs a concentrator on loopback for the env's agent
// and a second host's, with key.
func (e *env) startConcentrator(key []byte) (addr string, other *hostagent.Service) {
	e.t.Helper()
	return e.startConcentratorProxy(key, nil)
}

// startConcentratorProxy is startConcentrator as the ports' proxy when
// proxy is set.
func (e *env) startConcentratorProxy(key []byte, proxy *vspc.Proxy) (addr string, other *hostagent.Service) {
	e.t.Helper()
	dir, err := os.MkdirTemp("", "pvha-")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { os.RemoveAll(dir) })
	other = guesttest.StartHostAgentWith(e.t, "esx-1-02", dir, hostagent.Deps{Deps: deps.Deps{Bus: e.bus}})
	addr, _ = guesttest.Concentrate(e.t, &hostagent.Concentrator{Key: key, HelloTimeout: 2 * time.Second, Proxy: proxy,
		Agents: map[string]*hostagent.Service{host: e.svc, "esx-1-02": other}})
	return addr, other
}

// A network serial port's channel reaches the agent of the host its pod is
// placed on, through one listener for every host of the process, once its
// hello carries the pod's token; what the line carried before the hello is
// skipped.
func TestConcentratorRoutesSerialChannelsByTheirPodsHost(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentrator(key)
	e.putPod("here", "uid-here", host, 30, "app")
	e.putPod("there", "uid-there", "esx-1-02", 30, "app")
	hello := func(uid, name string) guestchannel.Hello {
		return guestchannel.Hello{PodUID: uid, Namespace: "default", Name: name, BootID: "b1",
			ChannelToken: guestchannel.ChannelToken(key, uid, "default", name)}
	}
	here := guesttest.DialSerial(t, addr, hello("uid-here", "here"), "app")
	guesttest.DialSerial(t, addr, hello("uid-there", "there"), "app")
	if r := e.waitReports("uid-here", 1)[0].r; r.Host != host {
		t.Errorf("report of pod here from host %q, want %s", r.Host, host)
	}
	if r := e.waitReports("uid-there", 1)[0].r; r.Host != "esx-1-02" {
		t.Errorf("report of pod there from host %q, want esx-1-02", r.Host)
	}
	// The guest boots again behind the same connection: its reports of the
	// new boot are published (their ids are the new boot's; the first
	// boot's seq 1 would otherwise hide the new one's).
	if err := here.Reboot("b2"); err != nil {
		t.Fatal(err)
	}
	e.waitLastReport("uid-here", "of the new boot", func(r events.PodContainersReported) bool { return r.BootID == "b2" })
	select {
	case <-here.Closed():
		t.Error("the concentrator closed the line of a guest that booted again")
	default:
	}
}

// A template's guest has no pod record: its line reaches the agent of the
// host the provisioner's record of the template names (KV pod-templates),
// whose reports then say that host, not whichever agent answered first. A
// template without a record is refused, as a pod without one is.
func TestConcentratorRoutesATemplatesLineByItsRecord(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentrator(key)
	ctx := context.Background()
	kv, err := e.bus.KV(ctx, events.BucketPodTemplates)
	if err != nil {
		t.Fatal(err)
	}
	hello := func(name string) guestchannel.Hello {
		return guestchannel.Hello{PodUID: name, Namespace: events.TemplateNamespace, Name: name, BootID: "b1",
			ChannelToken: guestchannel.ChannelToken(key, name, events.TemplateNamespace, name)}
	}
	// Templates on both hosts, so that a line handed to any agent would
	// show in some report's host.
	onHost := map[string]string{"pv-template-a": host, "pv-template-b": "esx-1-02", "pv-template-c": host, "pv-template-d": "esx-1-02"}
	for name, h := range onHost {
		var rec events.PodTemplatePlacement
		rec.Name, rec.Shape.Host = name, h
		data, _ := json.Marshal(rec)
		if _, err := kv.Put(ctx, name, data); err != nil {
			t.Fatal(err)
		}
		guesttest.DialSerial(t, addr, hello(name), "template-0")
	}
	for name, h := range onHost {
		r := e.waitReports(name, 1)[0].r
		if r.Host != h || r.Namespace != events.TemplateNamespace {
			t.Errorf("report of template %s from host %q in %s, want %s in %s", name, r.Host, r.Namespace, h, events.TemplateNamespace)
		}
	}

	g := guesttest.DialSerial(t, addr, hello("pv-template-absent"), "template-0")
	select {
	case <-g.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("the concentrator kept the line of a template without a record")
	}
	if errs := g.Errors(); len(errs) != 1 || !strings.Contains(errs[0], "has no record") {
		t.Errorf("refusal = %q, want one error saying the template has no record", errs)
	}
	if got := e.reported("pv-template-absent"); len(got) != 0 {
		t.Errorf("the line of a template without a record was reported: %+v", got)
	}
}

// waitLastReport waits until the pod's last report is what want says.
func (e *env) waitLastReport(uid, what string, want func(events.PodContainersReported) bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := e.reported(uid)
		if len(got) > 0 && want(got[len(got)-1].r) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no report %s within 10s: %+v", what, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConcentratorRefusesAHelloWithoutThePodsToken(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentrator(key)
	e.putPod("here", "uid-here", host, 30, "app")
	other := []byte(strings.Repeat("o", guestchannel.ChannelKeySize))
	for _, tc := range []struct {
		name  string
		hello guestchannel.Hello
		want  string
	}{
		{"no token", guestchannel.Hello{PodUID: "uid-here", Namespace: "default", Name: "here", BootID: "b"}, "without a channel token"},
		{"another key's token", guestchannel.Hello{PodUID: "uid-here", Namespace: "default", Name: "here", BootID: "b",
			ChannelToken: guestchannel.ChannelToken(other, "uid-here", "default", "here")}, "not the pod's"},
		{"another pod's token", guestchannel.Hello{PodUID: "uid-here", Namespace: "default", Name: "here", BootID: "b",
			ChannelToken: guestchannel.ChannelToken(key, "uid-lost", "default", "lost")}, "not the pod's"},
		{"unnamed pod", guestchannel.Hello{PodUID: "uid-here", BootID: "b", ChannelToken: guestchannel.ChannelToken(key, "uid-here", "", "")},
			"without its namespace and name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := guesttest.DialSerial(t, addr, tc.hello, "app")
			select {
			case <-g.Closed():
			case <-time.After(5 * time.Second):
				t.Fatal("the concentrator kept a refused channel open")
			}
			if errs := g.Errors(); len(errs) != 1 || !strings.Contains(errs[0], tc.want) {
				t.Errorf("refusal = %q, want one error saying %q", errs, tc.want)
			}
		})
	}
	if got := e.reported("uid-here"); len(got) != 0 {
		t.Errorf("a refused channel was reported: %+v", got)
	}
}

// As the ports' proxy (vSPC), the concentrator takes connections that open
// with the VMware telnet extension, in which the host names the port's VM:
// a line routes as any other, and its hello must be of the pod whose VM
// the host named. A raw line, which names no VM, is not taken.
func TestConcentratorAsThePortsProxy(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentratorProxy(key, &vspc.Proxy{HandshakeTimeout: time.Second})
	e.putPod("here", "uid-here", host, 30, "app")
	e.putPod("there", "uid-there", "esx-1-02", 30, "app")
	hello := func(uid, name string) guestchannel.Hello {
		return guestchannel.Hello{PodUID: uid, Namespace: "default", Name: name, BootID: "b1",
			ChannelToken: guestchannel.ChannelToken(key, uid, "default", name)}
	}
	vm := func(name string) vspc.Identity {
		return vspc.Identity{Direction: 'S', ServiceURI: "podvisor-channel", VCUUID: "50 2b 6e 1a 9d 7f 41 2c-8a 3e 11 22 33 44 55 66", Name: name}
	}
	guesttest.DialProxy(t, addr, vm("pv-uid-here"), hello("uid-here", "here"), "app")
	if r := e.waitReports("uid-here", 1)[0].r; r.Host != host {
		t.Errorf("report of pod here from host %q, want %s", r.Host, host)
	}
	// A port of another VM saying pod there's hello (with its token).
	g := guesttest.DialProxy(t, addr, vm("pv-uid-here"), hello("uid-there", "there"), "app")
	select {
	case <-g.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("the concentrator kept the line of another VM's port saying pod there's hello")
	}
	if errs := g.Errors(); len(errs) != 1 || !strings.Contains(errs[0], "on the port of VM pv-uid-here, whose VM is pv-uid-there") {
		t.Errorf("refusal = %q, want one naming both VMs", errs)
	}
	if got := e.reported("uid-there"); len(got) != 0 {
		t.Errorf("a refused channel was reported: %+v", got)
	}
	// A port connected directly (no telnet) names no VM: not taken.
	raw := guesttest.DialSerial(t, addr, hello("uid-there", "there"), "app")
	select {
	case <-raw.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy kept a line that named no VM")
	}
	if got := e.reported("uid-there"); len(got) != 0 {
		t.Errorf("a raw line was reported: %+v", got)
	}
}

// With a certificate the concentrator serves TLS only: a network serial port
// named ssl://… reaches it, a plain one does not.
func TestConcentratorServesTLS(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	cert, certKey, err := ca.Issue("concentrator", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	keyFile := filepath.Join(dir, "channel.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := hostagent.ListenConcentrator(hostagent.ConcentratorConfig{Listen: "127.0.0.1:0", KeyFile: keyFile, TLSCert: cert, TLSKey: certKey},
		map[string]*hostagent.Service{host: e.svc}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := guesttest.Concentrate(t, c)
	e.putPod("secret", "uid-secret", host, 30, "app")
	hello := guestchannel.Hello{PodUID: "uid-secret", Namespace: "default", Name: "secret", BootID: "b1",
		ChannelToken: guestchannel.ChannelToken(key, "uid-secret", "default", "secret")}

	plain := guesttest.DialSerial(t, addr, hello, "app")
	select {
	case <-plain.Closed():
	case <-time.After(5 * time.Second):
		t.Fatal("a plain TCP line stayed open on a TLS concentrator")
	}
	if got := e.reported("uid-secret"); len(got) != 0 {
		t.Fatalf("a plain TCP line was reported: %+v", got)
	}
	guesttest.DialSerialTLS(t, addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"}, hello, "app")
	if r := e.waitReports("uid-secret", 1)[0].r; r.Host != host {
		t.Errorf("report from host %q, want %s", r.Host, host)
	}
}

// A pod placed on another host (a migration) has its line routed again, to
// the agent of its new host, which then reports it and answers its logs and
// exec; the line itself stays connected.
func TestConcentratorFollowsAPodToItsNewHost(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentrator(key)
	rec := e.putPod("mover", "uid-mover", host, 30, "app")
	g := guesttest.DialSerial(t, addr, guestchannel.Hello{PodUID: "uid-mover", Namespace: "default", Name: "mover", BootID: "b1",
		ChannelToken: guestchannel.ChannelToken(key, "uid-mover", "default", "mover")}, "app")
	if r := e.waitReports("uid-mover", 1)[0].r; r.Host != host {
		t.Fatalf("first report from %q, want %s", r.Host, host)
	}
	// The migration's outcome, as the provisioner records it.
	rec.Host = "esx-1-02"
	data, _ := json.Marshal(rec)
	if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", "mover"), data); err != nil {
		t.Fatal(err)
	}
	e.waitLastReport("uid-mover", "from the pod's new host", func(r events.PodContainersReported) bool { return r.Host == "esx-1-02" })
	select {
	case <-g.Closed():
		t.Error("the line was closed: it should have been routed again, connected")
	default:
	}
	// Logs go to the pod's host (as `podvisor logs` sends them): the new
	// host's agent serves them now, the old one no longer can.
	g.SetLog("app", "moved along\n")
	logs := func(onHost string) (string, error) {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodLogs(onHost),
			&events.PodLogsRequest{Namespace: "default", Name: "mover", UID: "uid-mover", Container: "app"}, nil, &out, &errOut)
		if err == nil && errOut.Len() > 0 {
			err = errors.New(errOut.String())
		}
		return out.String(), err
	}
	if out, err := logs("esx-1-02"); err != nil || out != "moved along\n" {
		t.Errorf("logs through the new host: %q, %v", out, err)
	}
	if out, err := logs(host); err == nil {
		t.Errorf("logs through the old host answered %q after the move", out)
	}
}

// A line is silent until its guest's agent runs, and the resync sent before
// the agent opened its port is lost: the concentrator keeps the line and
// asks again, and the hello that comes late is admitted.
func TestConcentratorWaitsForASilentLine(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentrator(key) // HelloTimeout 2s
	e.putPod("late", "uid-late", host, 30, "app")
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	conn := guestchannel.NewConn(nc)
	start := time.Now()
	for i := range 2 {
		env, err := conn.Receive()
		if err != nil || env.Type != guestchannel.TypeResync {
			t.Fatalf("message %d on a silent line: %+v, %v; want resync", i, env, err)
		}
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("asked again after %s of silence, want about the hello timeout (2s)", waited)
	}
	hello := guestchannel.Hello{PodUID: "uid-late", Namespace: "default", Name: "late", BootID: "b1",
		ChannelToken: guestchannel.ChannelToken(key, "uid-late", "default", "late")}
	if err := conn.Send(guestchannel.TypeHello, "", hello); err != nil {
		t.Fatal(err)
	}
	if err := conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Full: true, Seq: 1, Phase: guestchannel.PhaseRunning}); err != nil {
		t.Fatal(err)
	}
	e.waitReports("uid-late", 1)
}

// A line whose pod's host has no agent here yet (a process serving every
// host adds a host's agent once the host is recorded; after a restart the
// hosts' lines come back first) is kept and asked again, and reaches the
// agent once there is one.
func TestConcentratorKeepsALineUntilItsHostIsServed(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	c := &hostagent.Concentrator{Key: key, HelloTimeout: 200 * time.Millisecond}
	addr, _ := guesttest.Concentrate(t, c)
	e.putPod("early", "uid-early", host, 30, "app")
	g := guesttest.DialSerial(t, addr, guestchannel.Hello{PodUID: "uid-early", Namespace: "default", Name: "early", BootID: "b1",
		ChannelToken: guestchannel.ChannelToken(key, "uid-early", "default", "early")}, "app")
	c.Add(host, e.svc) // the host's agent comes after the line
	e.waitReports("uid-early", 1)
	select {
	case <-g.Closed():
		t.Error("the line was closed")
	default:
	}
}

// Lines that never say hello are bounded: past MaxGreeting of them at once
// a new one is closed at once, and one that sends too much without a hello
// is closed.
func TestConcentratorBoundsLinesWithoutAHello(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, stop := guesttest.Concentrate(t, &hostagent.Concentrator{Key: key, MaxGreeting: 2, Agents: map[string]*hostagent.Service{host: e.svc}})
	dial := func() (net.Conn, *guestchannel.Conn) {
		t.Helper()
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc, guestchannel.NewConn(nc)
	}
	for range 2 { // silent lines, each asked for its hello
		_, conn := dial()
		if env, err := conn.Receive(); err != nil || env.Type != guestchannel.TypeResync {
			t.Fatalf("a silent line: %+v, %v; want resync", env, err)
		}
	}
	_, third := dial()
	if env, err := third.Receive(); err == nil {
		t.Fatalf("a third line without a hello, past MaxGreeting 2, got %+v; want it closed", env)
	}
	// Valid frames that are not a hello, past the budget.
	stop()
	addr2, _ := guesttest.Concentrate(t, &hostagent.Concentrator{Key: key, Agents: map[string]*hostagent.Service{host: e.svc}})
	nc, err := net.Dial("tcp", addr2)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	conn := guestchannel.NewConn(nc)
	chunk := guestchannel.LogChunk{Data: make([]byte, 16<<10)}
	closed := false
	for i := 0; i < 64 && !closed; i++ { // up to 1.4 MiB of base64, well past the budget
		closed = conn.Send(guestchannel.TypeLogChunk, "x", chunk) != nil
	}
	if !closed {
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			env, err := conn.Receive()
			if err != nil {
				break
			}
			if env.Type == guestchannel.TypeError {
				continue
			}
		}
	}
	var ne net.Error
	if _, err := conn.Receive(); errors.As(err, &ne) && ne.Timeout() {
		t.Error("a line that sent over a megabyte without a hello is still open")
	}
}

// A second line saying the same boot's hello while the pod's line still
// answers (someone who read the pod's token) is refused; once the pod's
// line is gone, a new one of that boot (the VM's reconnection) takes over.
func TestConcentratorKeepsALiveLineFromALaterOneOfTheSameBoot(t *testing.T) {
	e := newEnv(t)
	key := []byte(strings.Repeat("k", guestchannel.ChannelKeySize))
	addr, _ := e.startConcentrator(key)
	e.putPod("held", "uid-held", host, 30, "app")
	hello := guestchannel.Hello{PodUID: "uid-held", Namespace: "default", Name: "held", BootID: "b1",
		ChannelToken: guestchannel.ChannelToken(key, "uid-held", "default", "held")}
	first := guesttest.DialSerial(t, addr, hello, "app")
	e.waitReports("uid-held", 1)

	second := guesttest.DialSerial(t, addr, hello, "app")
	select {
	case <-second.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("a second line of the same boot was kept while the first answers")
	}
	if errs := second.Errors(); len(errs) != 1 || !strings.Contains(errs[0], "connected on another line") {
		t.Errorf("the second line's refusal: %q", errs)
	}
	select {
	case <-first.Closed():
		t.Fatal("the pod's live line was closed")
	default:
	}

	// The pod's line goes; its reconnection of the same boot is the pod's.
	first.Close()
	third := guesttest.DialSerial(t, addr, hello, "app")
	third.SetLog("app", "still me\n")
	var out, errOut bytes.Buffer
	eventually := time.Now().Add(10 * time.Second)
	for {
		out.Reset()
		errOut.Reset()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := podstream.Run(ctx, e.bus.Conn(), events.SubjectPodLogs(host),
			&events.PodLogsRequest{Namespace: "default", Name: "held", UID: "uid-held", Container: "app"}, nil, &out, &errOut)
		cancel()
		if err == nil && out.String() == "still me\n" {
			break
		}
		if time.Now().After(eventually) {
			t.Fatalf("logs through the reconnected line: %q, %q, %v", out.String(), errOut.String(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
