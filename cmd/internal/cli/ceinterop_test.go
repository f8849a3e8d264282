package cli

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	natsce "github.com/cloudevents/sdk-go/protocol/nats_jetstream/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/podvisor/podvisor/cmd/internal/serve"
	"github.com/podvisor/podvisor/events"
)

// Both directions with the official CloudEvents Go SDK's NATS JetStream
// binding (a client of podvisor that does not use its libraries): a
// pod.requested sent with its sender in binary mode yields a pod whose VM
// runs (the furthest a pod gets in `up`, which runs no guests), and its
// consumer reads podvisor's pod.vm.ready with the data content type set and
// the data decodable.
func TestCloudEventsSDKJetStreamBothWays(t *testing.T) {
	_, dir := upForTest(t, "all")
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	nc := natsForTest(t, vars)

	// The SDK's consumer: a push subscription on pv.pod.vm.ready.
	consumer, err := natsce.NewConsumerFromConn(nc, events.StreamPods, events.SubjectPodVMReady, nil, nil)
	if err != nil {
		t.Fatalf("SDK consumer: %v", err)
	}
	receiver, err := cloudevents.NewClient(consumer)
	if err != nil {
		t.Fatal(err)
	}
	running := make(chan cloudevents.Event, 16)
	rctx, stopReceiver := context.WithCancel(ctx)
	defer stopReceiver()
	go func() {
		_ = receiver.StartReceiver(rctx, func(ev cloudevents.Event) {
			if ev.Subject() == "sdk/web" {
				running <- ev
			}
		})
	}()

	// The SDK's sender, in binary mode (its default).
	sender, err := natsce.NewSenderFromConn(nc, events.StreamPods, events.SubjectPodRequested, nil)
	if err != nil {
		t.Fatalf("SDK sender: %v", err)
	}
	client, err := cloudevents.NewClient(sender)
	if err != nil {
		t.Fatal(err)
	}
	ev := cloudevents.NewEvent()
	ev.SetID("sdk-1")
	ev.SetSource("example/sdk-go")
	ev.SetType(events.TypePodRequested)
	ev.SetSubject("sdk/web")
	pod := map[string]any{
		"pod": map[string]any{
			"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": "web", "namespace": "sdk"},
			"spec":     map[string]any{"containers": []any{map[string]any{"name": "app", "image": vars["PODVISOR_REGISTRY"] + "/podvisor/base:1.0"}}},
		},
	}
	if err := ev.SetData(cloudevents.ApplicationJSON, pod); err != nil {
		t.Fatal(err)
	}
	if res := client.Send(ctx, ev); cloudevents.IsUndelivered(res) {
		t.Fatalf("SDK send: %v", res)
	}

	select {
	case got := <-running:
		if got.DataContentType() != cloudevents.ApplicationJSON {
			t.Errorf("pod.vm.ready as the SDK reads it: datacontenttype %q, want %s", got.DataContentType(), cloudevents.ApplicationJSON)
		}
		var r events.PodVMReady
		if err := got.DataAs(&r); err != nil || r.Host == "" || r.VM == "" {
			t.Errorf("pod.vm.ready data %s: %v (want host and vm)", got.Data(), err)
		}
		if got.Type() != events.TypePodVMReady || got.Source() != "podvisor/provisioner" {
			t.Errorf("event %s from %s", got.Type(), got.Source())
		}
	case <-ctx.Done():
		out, _, _ := run(t, dir, "", "events", "--dlq")
		t.Fatalf("no pod.vm.ready for sdk/web reached the SDK consumer; dead letters:\n%s", out)
	}
	// The record that shows the fact is saved by the provisioner beside
	// the event: wait for it rather than race it.
	var out string
	var code int
	for deadline := time.Now().Add(20 * time.Second); ; {
		out, _, code = run(t, dir, "", "get", "pod", "web", "-n", "sdk", "-o", `jsonpath={.status.conditions[?(@.type=="VMReady")].status}`)
		if (code == 0 && out == "True") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the record, the condition itself is what is awaited
	}
	if code != 0 || out != "True" {
		t.Errorf("podvisor get pod sdk/web: VMReady %q (exit %d), want True", out, code)
	}
	if out, _, _ := run(t, dir, "", "events", "--dlq"); out != "No dead-lettered events found.\n" {
		t.Errorf("dead letters after an SDK publish:\n%s", out)
	}
}
