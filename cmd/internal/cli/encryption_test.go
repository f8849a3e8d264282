package cli

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/diskkeys"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// The marker is assembled by the container's shell, so it is in no spec,
// event or record: only the container's writes can put it on a disk.
const (
	markerScript = `m="podvisor-$((6*7))-marker"; i=0; while [ $i -lt 64 ]; do echo "$m" >> /secret.txt; i=$((i+1)); done; echo "$m"; sleep 3600`
	marker       = "podvisor-42-marker"
)

func markerPod(image, name string, encrypted bool) string {
	ann := ""
	if encrypted {
		ann = "\n  annotations:\n    " + events.AnnotationEphemeralEncryption + ": " + events.EphemeralEncryptionRequired
	}
	script, _ := json.Marshal(markerScript)
	return `apiVersion: v1
kind: Pod
metadata:
  name: ` + name + ann + `
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: ` + image + `
    command: ["/bin/sh", "-c", ` + string(script) + `]
`
}

// Secure instantiation as a user meets it: `podvisor up` with guests,
// `podvisor apply` of a pod with podvisor.io/ephemeral-encryption:
// required. The pod runs (its guest got the key from the provisioner
// through its host agent) and logs the marker it wrote; after power-off
// the marker is on the ephemeral disk of a pod without the annotation
// (the control: the bytes did reach the datastore) and not on the
// encrypted pod's; the disk key, in any encoding, is in no stream message
// (events, dead letters, every revision of every KV value) and no log
// line of the run.
func TestEncryptedEphemeralDiskAcceptance(t *testing.T) {
	logs := &syncbuf.Buffer{}
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: 1,
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Settings: config.Map(map[string]string{provisioner.EnvEphemeralDisk: "128"})})
	ctx := t.Context()
	admin, err := sys.Dial(ctx, bus.IdentityAdmin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	record := func(name string) *events.PodRecord { return podRecord(t, admin, "default", name) }

	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, name := range []string{"sealed", "plain"} {
			if r := record(name); r != nil {
				t.Logf("%s: phase %s reason %s: %s; vm %s", name, r.Phase, r.Reason, r.Message, r.VMRef)
			}
		}
		if p := os.Getenv("PODVISOR_TEST_LOG"); p != "" {
			_ = os.WriteFile(p, logs.Bytes(), 0o600)
		}
	})
	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag
	mustRun(t, dir, markerPod(image, "sealed", true)+"---\n"+markerPod(image, "plain", false), "apply", "-f", "-")
	for _, name := range []string{"sealed", "plain"} {
		eventuallyWithin(t, 90*time.Second, name+" Running", func() bool {
			r := record(name)
			return r != nil && r.Phase == events.PodPhaseRunning
		})
		eventuallyWithin(t, 20*time.Second, name+" logs the marker", func() bool {
			out, _, code := run(t, dir, "", "logs", name)
			return code == 0 && strings.Contains(out, marker)
		})
	}
	sealed := record("sealed")
	if sealed.Encryption == nil || len(sealed.Encryption.WrappedKey) == 0 || sealed.Encryption.Nonce == "" {
		t.Fatalf("the encrypted pod's record keeps no sealed key: %+v", sealed.Encryption)
	}
	if record("plain").Encryption != nil {
		t.Fatal("the pod without the annotation got an encrypted disk")
	}

	// Power both VMs off: the guests unmount their disks, so everything
	// written is in the flat extent files on the datastore.
	c := simtest.Client(t, sys.Datacenter)
	disks := map[string]string{}
	for _, name := range []string{"sealed", "plain"} {
		r := record(name)
		info, ok := sys.Datacenter.Guests().Guest(r.VMRef)
		if !ok {
			t.Fatalf("%s: VM %s runs no guest", name, r.VMRef)
		}
		for _, d := range info.VM.Disks {
			if d.Unit == "scsi0:0" {
				disks[name] = d.Path
			}
		}
		vm := object.NewVirtualMachine(c.Client, types.ManagedObjectReference{Type: "VirtualMachine", Value: r.VMRef})
		task, err := vm.PowerOff(ctx)
		if err != nil || task.Wait(ctx) != nil {
			t.Fatalf("power off %s: %v", name, err)
		}
	}
	if !fileContains(t, disks["plain"], []byte(marker)) {
		t.Fatalf("the control pod's marker is not on its ephemeral disk %s: the check would prove nothing", disks["plain"])
	}
	if !fileContains(t, disks["sealed"], []byte("podvisor-eph")) {
		t.Fatalf("%s does not hold the ephemeral filesystem", disks["sealed"])
	}
	if fileContains(t, disks["sealed"], []byte(marker)) {
		t.Fatal("the encrypted pod's marker is on its ephemeral disk in clear")
	}

	// The key, from the record and the key file, in every form it could
	// take in a message or a log line.
	keeper, err := diskkeys.Load(filepath.Join(dir, "disk-kek"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := keeper.Open(sealed)
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string][]byte{
		"raw": key, "hex": []byte(hex.EncodeToString(key)), "base64": []byte(base64.StdEncoding.EncodeToString(key)),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(key)), "base64 (raw std)": []byte(base64.RawStdEncoding.EncodeToString(key)),
	}
	leak := func(where string, data []byte) {
		for form, f := range forms {
			if bytes.Contains(data, f) {
				t.Errorf("the disk key (%s) is in %s", form, where)
			}
		}
	}
	js := admin.JetStream()
	streams := js.ListStreams(ctx)
	checked := 0
	for info := range streams.Info() {
		s, err := js.Stream(ctx, info.Config.Name)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				continue // deleted or purged
			}
			checked++
			leak("stream "+info.Config.Name+" message "+m.Subject, m.Data)
			for k, vs := range m.Header {
				for _, v := range vs {
					leak("stream "+info.Config.Name+" header "+k, []byte(v))
				}
			}
		}
	}
	if err := streams.Err(); err != nil && err != jetstream.ErrEndOfData {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("only %d stream messages checked", checked)
	}
	leak("the services' logs", logs.Bytes())
	if !bytes.Contains(logs.Bytes(), []byte("disk key released")) {
		t.Error("the provisioner's log does not show the release: was the log captured?")
	}
	_ = filepath.WalkDir(filepath.Join(dir, "guests"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && filepath.Base(p) == "console.log" {
			b, _ := os.ReadFile(p)
			leak("guest console "+p, b)
		}
		return nil
	})
	env, _ := os.ReadFile(filepath.Join(dir, "env"))
	leak("the env file", env)
}

// fileContains scans a (sparse, possibly large) file for needle without
// reading it whole.
func fileContains(t *testing.T, path string, needle []byte) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	carry := 0
	for {
		n, err := f.Read(buf[carry:])
		if bytes.Contains(buf[:carry+n], needle) {
			return true
		}
		if err == io.EOF {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		keep := min(len(needle)-1, carry+n)
		copy(buf, buf[carry+n-keep:carry+n])
		carry = keep
	}
}
