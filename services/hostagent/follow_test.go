package hostagent_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/bustest"
)

// A process serving every host adds an agent for each host of the
// inventory once: those recorded before it starts and those recorded after.
func TestFollowHostsAddsEveryHostOnce(t *testing.T) {
	b := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv, err := b.KV(ctx, events.BucketHosts)
	if err != nil {
		t.Fatal(err)
	}
	put := func(name string) {
		t.Helper()
		data, _ := json.Marshal(events.HostRecord{HostInfo: events.HostInfo{Name: name}})
		if _, err := kv.Put(ctx, events.HostRecordKey(name), data); err != nil {
			t.Fatal(err)
		}
	}
	put("esx-1")
	var mu sync.Mutex
	var added, failed []string
	done := make(chan error, 1)
	go func() {
		done <- hostagent.FollowHosts(ctx, b, func(host string) error {
			mu.Lock()
			defer mu.Unlock()
			added = append(added, host)
			if host == "esx 2" {
				return errors.New("a host name the agent's settings refuse")
			}
			return nil
		}, func(host string, err error) {
			mu.Lock()
			defer mu.Unlock()
			failed = append(failed, host)
		})
	}()
	put("esx 2") // a host it cannot serve: reported, and not the end of the others
	put("esx-1") // a host's record written again (its totals)
	put("esx-3")
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(added)
		mu.Unlock()
		if len(got) >= 3 {
			slices.Sort(got)
			if !slices.Equal(got, []string{"esx 2", "esx-1", "esx-3"}) {
				t.Fatalf("agents added for %v, want esx-1, esx 2 and esx-3 once each", got)
			}
			mu.Lock()
			if !slices.Equal(failed, []string{"esx 2"}) {
				t.Errorf("hosts reported failed: %v, want esx 2", failed)
			}
			mu.Unlock()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents added for %v within 10s, want three hosts", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("FollowHosts: %v", err)
	}
}
