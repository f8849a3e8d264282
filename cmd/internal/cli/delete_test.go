package cli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// delete pod sends the uid of the pod it read as a precondition: the
// delete is of that pod, not of one made again under the name before the
// provisioner takes it.
func TestDeletePodSendsTheUIDItRead(t *testing.T) {
	_, dir := upForTest(t, "provisioner")
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: rep}\nspec: {containers: [{name: a, image: registry.local/a:1}]}\n"
	if _, errOut, code := run(t, dir, pod, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %s", errOut)
	}
	var uid string
	eventually(t, "the pod's admission", func() bool {
		out, _, code := run(t, dir, "", "get", "pod", "rep", "-o", "json")
		var p struct{ Metadata struct{ UID string } }
		_ = json.Unmarshal([]byte(out), &p)
		uid = p.Metadata.UID
		return code == 0 && uid != ""
	})
	if _, errOut, code := run(t, dir, "", "delete", "pod", "rep"); code != 0 {
		t.Fatalf("delete: %s", errOut)
	}

	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	js, err := jetstream.New(natsForTest(t, vars))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := js.Stream(ctx, events.StreamPods)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(ctx, events.SubjectPodDeleteRequested)
	if err != nil {
		t.Fatalf("the stored delete: %v", err)
	}
	ev, err := bus.DecodeHeaders(raw.Header, raw.Data)
	if err != nil {
		t.Fatal(err)
	}
	var d events.PodDeleteRequested
	if err := json.Unmarshal(ev.Data(), &d); err != nil {
		t.Fatal(err)
	}
	if d.Name != "rep" || d.UID != uid {
		t.Errorf("delete sent %+v; want pod rep with the uid read, %s", d, uid)
	}
}
