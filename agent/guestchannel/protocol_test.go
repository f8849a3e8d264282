package guestchannel

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestConnRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	ca, cb := NewConn(a), NewConn(b)
	defer ca.Close()
	defer cb.Close()

	big := []byte(strings.Repeat("x", ChunkSize))
	go func() {
		_ = ca.Send(TypeHello, "", Hello{Protocol: Protocol, PodUID: "u1", BootID: "b1"})
		_ = ca.Send(TypeLogChunk, "r1", LogChunk{Data: big, EOF: true})
	}()

	env, err := cb.Receive()
	if err != nil {
		t.Fatal(err)
	}
	var h Hello
	if env.Type != TypeHello || env.V != Protocol || env.Decode(&h) != nil || h.PodUID != "u1" {
		t.Fatalf("hello = %+v (%+v)", env, h)
	}
	env, err = cb.Receive()
	if err != nil {
		t.Fatal(err)
	}
	var c LogChunk
	if env.ID != "r1" || env.Decode(&c) != nil || len(c.Data) != ChunkSize || !c.EOF {
		t.Fatalf("chunk = %s %d eof=%v", env.ID, len(c.Data), c.EOF)
	}
}

func TestReceiveRefusesOversizedAndMalformedFrames(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        error
	}{
		{"too large", strings.Repeat("a", MaxFrame+10) + "\n", ErrFrameTooLarge},
		{"not json", "hello\n", nil},
		{"no type", `{"v":1}` + "\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewConn(nopCloser{strings.NewReader(tc.input)})
			_, err := c.Receive()
			if err == nil || err == io.EOF {
				t.Fatalf("Receive = %v, want an error", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Receive = %v, want %v", err, tc.want)
			}
		})
	}
}

type nopCloser struct{ io.Reader }

func (nopCloser) Write(p []byte) (int, error) { return len(p), nil }
func (nopCloser) Close() error                { return nil }

func validSpec() *PodSpec {
	return &PodSpec{
		Version: SpecVersion, UID: "u1", Namespace: "default", Name: "web", RestartPolicy: "Always",
		Disks: []Disk{
			{Role: DiskEphemeral, Unit: "scsi0:0", FS: "ext4"},
			{Role: DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:base"},
			{Role: DiskImage, Unit: "scsi0:2", FS: "erofs", ChainID: "sha256:top", Parent: "sha256:base"},
		},
		Containers: []Container{{Name: "app", Chain: []string{"sha256:top", "sha256:base"}}},
	}
}

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*PodSpec)
		field string
	}{
		{"valid", func(*PodSpec) {}, ""},
		{"unknown chain", func(s *PodSpec) { s.Containers[0].Chain = []string{"sha256:nope"} }, "containers[0].chain[0]"},
		{"no ephemeral", func(s *PodSpec) { s.Disks = s.Disks[1:] }, "disks"},
		{"restart policy", func(s *PodSpec) { s.RestartPolicy = "Sometimes" }, "restartPolicy"},
		{"duplicate name", func(s *PodSpec) {
			s.InitContainers = []Container{{Name: "app", Chain: []string{"sha256:base"}}}
		}, "containers[0].name"},
		{"volume", func(s *PodSpec) { s.Containers[0].VolumeMounts = []VolumeMount{{Name: "v", MountPath: "/v"}} }, "volumeMounts[0].name"},
		{"nic", func(s *PodSpec) {
			s.NICs = []NIC{{Network: "default", MAC: "02:50:56:00:00:01", IP: "10.0.0.2", Prefix: 24, Gateway: "10.0.0.1"}}
		}, ""},
		{"nic mac", func(s *PodSpec) { s.NICs = []NIC{{Network: "default", MAC: "zz"}} }, "nics[0].mac"},
		{"nic ip", func(s *PodSpec) { s.NICs = []NIC{{Network: "default", IP: "10.0.0.300", Prefix: 24}} }, "nics[0].ip"},
		{"nic prefix", func(s *PodSpec) { s.NICs = []NIC{{Network: "default", IP: "10.0.0.3"}} }, "nics[0].prefix"},
		{"nic gateway", func(s *PodSpec) {
			s.NICs = []NIC{{Network: "default", IP: "10.0.0.3", Prefix: 24, Gateway: "10.0.1.1"}}
		}, "nics[0].gateway"},
		{"nic network", func(s *PodSpec) { s.NICs = []NIC{{IP: "10.0.0.3", Prefix: 24}} }, "nics[0].network"},
		{"network pending", func(s *PodSpec) { s.NetworkPending = true }, ""},
		{"network pending with nics", func(s *PodSpec) {
			s.NetworkPending = true
			s.NICs = []NIC{{Network: "default", MAC: "02:50:56:00:00:01"}}
		}, "networkPending"},
		{"network pending with init containers", func(s *PodSpec) {
			s.NetworkPending = true
			s.InitContainers = []Container{{Name: "init", Chain: []string{"sha256:base"}}}
		}, "networkPending"},
		{"template", func(s *PodSpec) { s.Template = true }, ""},
		{"template with encryption", func(s *PodSpec) {
			s.Template = true
			s.Encryption = &Encryption{Nonce: "n1"}
		}, "template: excludes encryption: an encrypted ephemeral disk is keyed per VM"},
		{"template with nics", func(s *PodSpec) {
			s.Template = true
			s.NICs = []NIC{{Network: "default", MAC: "02:50:56:00:00:01", IP: "10.0.0.2", Prefix: 24}}
		}, "template: excludes nics: a template configures no network"},
		{"completed", func(s *PodSpec) {
			s.RestartPolicy = "OnFailure"
			s.Containers[0].Completed = &ContainerState{Kind: StateTerminated, Reason: "Completed"}
		}, ""},
		{"completed with a failure under OnFailure", func(s *PodSpec) {
			s.RestartPolicy = "OnFailure"
			s.Containers[0].Completed = &ContainerState{Kind: StateTerminated, ExitCode: 1}
		}, "containers[0].completed: restartPolicy OnFailure restarts a container that exited 1"},
		{"completed under Always", func(s *PodSpec) {
			s.Containers[0].Completed = &ContainerState{Kind: StateTerminated}
		}, "containers[0].completed: restartPolicy Always restarts"},
		{"completed running", func(s *PodSpec) {
			s.RestartPolicy = "Never"
			s.Containers[0].Completed = &ContainerState{Kind: StateRunning}
		}, `containers[0].completed: state "running" is not terminated`},
		{"completed init container", func(s *PodSpec) {
			s.RestartPolicy = "Never"
			s.InitContainers = []Container{{Name: "init", Chain: []string{"sha256:base"}, Completed: &ContainerState{Kind: StateTerminated}}}
		}, "initContainers[0].completed: init containers run again"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.edit(s)
			wantErrorNaming(t, s.Validate(), tc.field)
		})
	}
}

func TestSpecRoundTripRefusesUnknownFields(t *testing.T) {
	s, err := MarshalSpec(validSpec())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalSpec([]byte(s)); err != nil {
		t.Fatal(err)
	}
	newer := strings.Replace(s, `"version":1`, `"version":1,"sandbox":"gvisor"`, 1)
	if _, err := UnmarshalSpec([]byte(newer)); err == nil || !strings.Contains(err.Error(), "sandbox") {
		t.Fatalf("UnmarshalSpec(newer) = %v, want unknown field refused", err)
	}
}

// wantErrorNaming fails the test unless err names field, or, for an empty
// field, unless err is nil.
func wantErrorNaming(t *testing.T, err error, field string) {
	t.Helper()
	if field == "" {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), field) {
		t.Fatalf("Validate = %v, want an error naming %s", err, field)
	}
}

// A read that fails midway through a frame (a deadline passing) keeps what
// it read: the next Receive returns the whole frame, not two halves.
func TestReceiveKeepsAFrameCutByADeadline(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := NewConn(a)
	frame := `{"v":1,"type":"hello","body":{"podUID":"u","bootID":"b"}}` + "\n"
	go func() { _, _ = b.Write([]byte(frame[:20])) }()
	if err := a.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	var ne net.Error
	if _, err := c.Receive(); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Receive with half a frame and a deadline: %v, want a timeout", err)
	}
	_ = a.SetReadDeadline(time.Time{})
	go func() { _, _ = b.Write([]byte(frame[20:])) }()
	env, err := c.Receive()
	if err != nil || env.Type != TypeHello {
		t.Fatalf("Receive after the deadline: %+v, %v; want the whole hello", env, err)
	}
}

// A peer that stops reading does not hold a bounded Send: its frame is cut
// at the write timeout and the stream closed (a cut frame cannot be taken
// back), which the peer sees as the stream's end.
func TestBoundedSendClosesAStreamThePeerDoesNotTake(t *testing.T) {
	a, b := net.Pipe() // unbuffered: a write waits for the peer's read
	ca, cb := NewConn(a), NewConn(b)
	defer cb.Close()
	ca.SetWriteTimeout(100 * time.Millisecond)
	sent := make(chan error, 1)
	go func() { sent <- ca.Send(TypeStop, "s1", StopRequest{GracePeriodSeconds: 30}) }()
	select {
	case err := <-sent:
		if !errors.Is(err, ErrWriteTimeout) {
			t.Fatalf("Send to a peer that does not read = %v, want ErrWriteTimeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send to a peer that does not read did not return")
	}
	if env, err := cb.Receive(); err == nil {
		t.Fatalf("the peer received %+v after a cut frame, want the stream closed", env)
	}
}

// SendBefore gives up waiting behind another Send's write that does not
// end, writing nothing.
func TestSendBeforeStopsWaitingBehindAStuckWrite(t *testing.T) {
	a, b := net.Pipe()
	ca := NewConn(a)
	defer ca.Close()
	defer b.Close()
	stuck := make(chan error, 1)
	go func() { stuck <- ca.Send(TypeStatus, "", Status{Full: true}) }() // unbounded, never read
	// The unbounded Send holds the write (a net.Pipe write waits for a
	// reader): wait until it does.
	for len(ca.wmu) == 0 {
		runtime.Gosched()
	}
	err := ca.SendBefore(time.Now().Add(100*time.Millisecond), TypeStop, "s1", StopRequest{GracePeriodSeconds: 1})
	if !errors.Is(err, ErrWriteTimeout) {
		t.Fatalf("SendBefore behind a stuck write = %v, want ErrWriteTimeout", err)
	}
	// It wrote nothing and closed nothing: the stuck frame still goes
	// through once the peer reads.
	cb := NewConn(b)
	if env, err := cb.Receive(); err != nil || env.Type != TypeStatus {
		t.Fatalf("the peer received %+v, %v; want the status the stuck Send wrote", env, err)
	}
	if err := <-stuck; err != nil {
		t.Fatalf("the stuck Send: %v", err)
	}
}

// A logs request without FromEnd encodes as before it existed, so an agent
// that predates it reads what it always read; FromEnd is its own field (a
// request with it goes only to an agent announcing CapLogsFromEnd).
func TestLogsRequestFromEndEncoding(t *testing.T) {
	for _, tc := range []struct {
		req  LogsRequest
		want string
	}{
		{LogsRequest{Container: "app", Follow: true, TailLines: 1}, `{"container":"app","follow":true,"tailLines":1}`},
		{LogsRequest{Container: "app", Follow: true, FromEnd: true}, `{"container":"app","follow":true,"fromEnd":true}`},
	} {
		data, err := json.Marshal(tc.req)
		if err != nil || string(data) != tc.want {
			t.Errorf("%+v encoded as %s (%v), want %s", tc.req, data, err, tc.want)
		}
	}
}

// The line-time options are their own fields, left out when not asked
// for (so a request without them encodes as before); a request with any
// of them needs CapLogsTimestamps, and Validate names the field at fault.
func TestLogsRequestTimestampOptions(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, tc := range []struct {
		req     LogsRequest
		json    string
		option  string
		invalid string
	}{
		{LogsRequest{Container: "app", TailLines: 1}, `{"container":"app","tailLines":1}`, "", ""},
		{LogsRequest{Container: "app", Timestamps: true}, `{"container":"app","timestamps":true}`, "timestamps", ""},
		{LogsRequest{Container: "app", SinceTime: &since}, `{"container":"app","sinceTime":"2026-01-02T03:04:05.000000006Z"}`, "sinceTime", ""},
		{LogsRequest{Container: "app", LimitBytes: 10}, `{"container":"app","limitBytes":10}`, "limitBytes", ""},
		{LogsRequest{Container: "app", LimitBytes: -1}, `{"container":"app","limitBytes":-1}`, "limitBytes", "limitBytes: -1 must not be negative"},
		{LogsRequest{Container: "app", TailLines: -2}, `{"container":"app","tailLines":-2}`, "", "tailLines: -2"},
		{LogsRequest{Container: "app", TailLines: 2, FromEnd: true}, `{"container":"app","tailLines":2,"fromEnd":true}`, "", "fromEnd"},
	} {
		data, err := json.Marshal(tc.req)
		if err != nil || string(data) != tc.json {
			t.Errorf("%+v encoded as %s (%v), want %s", tc.req, data, err, tc.json)
		}
		if got := tc.req.TimestampsOption(); got != tc.option {
			t.Errorf("%+v: option needing %s = %q, want %q", tc.req, CapLogsTimestamps, got, tc.option)
		}
		err = tc.req.Validate()
		if (err == nil) != (tc.invalid == "") || (err != nil && !strings.Contains(err.Error(), tc.invalid)) {
			t.Errorf("%+v: Validate = %v, want an error containing %q", tc.req, err, tc.invalid)
		}
	}
}
