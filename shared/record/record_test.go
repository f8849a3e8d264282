package record_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/record"
)

type counter struct {
	N       int    `json:"n"`
	Stamped string `json:"stamped,omitempty"`
}

func newStore(t *testing.T) (*record.Store[counter], context.Context) {
	t.Helper()
	b := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	kv, err := b.KV(ctx, bus.BucketPods)
	if err != nil {
		t.Fatal(err)
	}
	s := record.New[counter](kv, "counter")
	s.BeforeWrite = func(c *counter) { c.Stamped = "yes" }
	return s, ctx
}

func TestCreateGetPut(t *testing.T) {
	s, ctx := newStore(t)
	if v, rev, err := s.Get(ctx, "a"); v != nil || rev != 0 || err != nil {
		t.Fatalf("Get of a missing record = %v %d %v, want nil 0 nil", v, rev, err)
	}
	rev, err := s.Create(ctx, "a", &counter{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "a", &counter{N: 2}); !errors.Is(err, record.ErrExists) {
		t.Errorf("second Create: %v, want ErrExists", err)
	}
	v, got, err := s.Get(ctx, "a")
	if err != nil || v.N != 1 || v.Stamped != "yes" || got != rev {
		t.Fatalf("Get = %+v %d %v, want N=1 stamped at rev %d", v, got, err, rev)
	}
	if _, err := s.Put(ctx, "a", &counter{N: 3}, rev+100); !errors.Is(err, record.ErrConflict) {
		t.Errorf("Put at a stale revision: %v, want ErrConflict", err)
	}
	if _, err := s.Put(ctx, "a", &counter{N: 3}, 0); !errors.Is(err, record.ErrConflict) {
		t.Errorf("Put creating a taken key: %v, want ErrConflict", err)
	}
	if _, err := s.Put(ctx, "a", &counter{N: 3}, rev); err != nil {
		t.Errorf("Put at the read revision: %v", err)
	}
	if _, err := s.Set(ctx, "a", &counter{N: 4}); err != nil {
		t.Errorf("Set: %v", err)
	}
	if v, _, _ := s.Get(ctx, "a"); v.N != 4 {
		t.Errorf("after Set, N = %d, want 4", v.N)
	}
}

// Concurrent Mutates of one record lose no change: each conflict re-reads
// and re-applies.
func TestMutateRetriesConflicts(t *testing.T) {
	s, ctx := newStore(t)
	s.Attempts = 50
	if _, err := s.Create(ctx, "c", &counter{}); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			_, err := s.Mutate(ctx, "c", func(c *counter) error { c.N++; return nil })
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	v, _, _ := s.Get(ctx, "c")
	if v.N != writers {
		t.Errorf("N = %d after %d concurrent increments", v.N, writers)
	}
}

func TestMutateMissingUnchangedAndUpsert(t *testing.T) {
	s, ctx := newStore(t)
	if _, err := s.Mutate(ctx, "none", func(*counter) error { return nil }); !errors.Is(err, record.ErrNotFound) {
		t.Errorf("Mutate of a missing record: %v, want ErrNotFound", err)
	}
	v, err := s.Upsert(ctx, "u", func(c *counter, exists bool) error {
		if exists {
			t.Error("Upsert of a new key says it exists")
		}
		c.N = 7
		return nil
	})
	if err != nil || v.N != 7 {
		t.Fatalf("Upsert = %+v %v", v, err)
	}
	_, rev, _ := s.Get(ctx, "u")
	v, err = s.Mutate(ctx, "u", func(*counter) error { return record.ErrUnchanged })
	if err != nil || v.N != 7 {
		t.Errorf("unchanged Mutate = %+v %v", v, err)
	}
	if _, after, _ := s.Get(ctx, "u"); after != rev {
		t.Errorf("ErrUnchanged wrote a revision (%d → %d)", rev, after)
	}
	boom := errors.New("boom")
	if _, err := s.Mutate(ctx, "u", func(*counter) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("change error = %v, want it returned as is", err)
	}
}

func TestListDeleteWatch(t *testing.T) {
	s, ctx := newStore(t)
	for _, k := range []string{"b", "a"} {
		if _, err := s.Create(ctx, k, &counter{N: int(k[0])}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.List(ctx)
	if err != nil || len(all) != 2 || all[0].N != 'a' {
		t.Fatalf("List = %+v %v, want a then b", all, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	changes, err := s.Watch(wctx, ">", func(err error) { t.Error(err) })
	if err != nil {
		t.Fatal(err)
	}
	next := func() record.Change[counter] {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no change within 5s")
		}
		return record.Change[counter]{}
	}
	seen := map[string]bool{}
	for range 2 {
		c := next()
		if !c.Initial || c.Value == nil {
			t.Errorf("first changes should be the initial values: %+v", c)
		}
		seen[c.Key] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Errorf("initial values %v, want a and b", seen)
	}
	if _, err := s.Mutate(ctx, "a", func(c *counter) error { c.N = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Key != "a" || c.Initial || c.Value == nil || c.Value.N != 1 {
		t.Errorf("update seen as %+v", c)
	}
	if err := s.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Key != "b" || c.Value != nil {
		t.Errorf("delete seen as %+v", c)
	}
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Errorf("Delete of a missing record: %v", err)
	}
	cancel()
	select {
	case _, open := <-changes:
		if open {
			// A change in flight may still arrive; the channel closes next.
			if _, open = <-changes; open {
				t.Error("Watch channel not closed after its context ended")
			}
		}
	case <-time.After(5 * time.Second):
		t.Error("Watch channel not closed after its context ended")
	}
}

// TestConflictInEveryForm: a lost compare-and-set is recognised in each
// form JetStream reports it, the replicated streams' code included, and
// nothing else is.
func TestConflictInEveryForm(t *testing.T) {
	s, ctx := newStore(t)
	kv := s.KV()
	rev, err := kv.Create(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "k", []byte("2"), rev); err != nil {
		t.Fatal(err)
	}
	_, createErr := kv.Create(ctx, "k", []byte("x"))
	_, updateErr := kv.Update(ctx, "k", []byte("x"), rev)
	deleteErr := kv.Delete(ctx, "k", jetstream.LastRevision(rev))
	_, missing := kv.Get(ctx, "none")
	for name, tc := range map[string]struct {
		err  error
		want bool
	}{
		"create of a taken key":        {createErr, true},
		"update at a stale revision":   {updateErr, true},
		"delete at a stale revision":   {deleteErr, true},
		"replicated stream's CAS code": {&jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant}, true},
		"missing key":                  {missing, false},
		"another error":                {errors.New("timeout"), false},
		"no error":                     {nil, false},
	} {
		if got := record.Conflict(tc.err); got != tc.want {
			t.Errorf("%s: Conflict(%v) = %v, want %v", name, tc.err, got, tc.want)
		}
	}
}

// Scan reads every record in one pass, leaving out the keys Skip names and
// values that are not records of T.
func TestScan(t *testing.T) {
	s, ctx := newStore(t)
	for _, k := range []string{"a", "b", "lease"} {
		if _, err := s.Create(ctx, k, &counter{N: len(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.KV().Put(ctx, "junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	s.Skip = func(key string) bool { return key == "lease" }
	got, err := s.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].N != 1 {
		t.Fatalf("Scan = %+v, want only a's record", got)
	}
}

// A strict Scan stops at a value it cannot decode, naming its key; a view
// of the record (a struct of some of its fields) reads only those fields.
func TestStrictScanAndViews(t *testing.T) {
	s, ctx := newStore(t)
	rev, err := s.Create(ctx, "a", &counter{N: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ScanEach(ctx, func(key string, got uint64, v *counter) error {
		if key != "a" || got != rev || v.N != 7 {
			t.Errorf("ScanEach gave %s at %d: %+v; want a at %d with N=7", key, got, v, rev)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	view := record.New[struct {
		N int `json:"n"`
	}](s.KV(), "counter")
	view.Strict = true
	got, err := view.Scan(ctx)
	if err != nil || len(got) != 1 || got[0].N != 7 {
		t.Fatalf("Scan of a view = %+v, %v; want one with N=7", got, err)
	}
	if _, err := s.KV().Put(ctx, "junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if got, err := view.Scan(ctx); err == nil || !strings.Contains(err.Error(), "junk") {
		t.Fatalf("strict Scan over an undecodable value = %+v, %v; want an error naming junk", got, err)
	}
	// Not strict, the pass goes on and says what it left out.
	view.Strict = false
	var left []string
	view.Undecodable = func(key string, err error) { left = append(left, key+": "+err.Error()) }
	if got, err := view.Scan(ctx); err != nil || len(got) != 1 || len(left) != 1 || !strings.HasPrefix(left[0], "junk: ") {
		t.Fatalf("Scan with Undecodable = %+v, %v, told %q; want a's record and junk told", got, err, left)
	}
}

// A pass whose replay never ends, and a read whose answer never comes, end
// in an error within their bounds, even under a context that ends much
// later.
func TestScanAndCallsAreBounded(t *testing.T) {
	s, ctx := newStore(t)
	stalled := record.New[counter](bustest.StalledKV{KeyValue: s.KV()}, "counter")
	stalled.ScanTimeout, stalled.CallTimeout = 100*time.Millisecond, 100*time.Millisecond
	for what, call := range map[string]func() error{
		"Scan": func() error { _, err := stalled.Scan(ctx); return err },
		"Get":  func() error { _, _, err := stalled.Get(ctx, "a"); return err },
	} {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s of a stalled bucket returned no error", what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s of a stalled bucket still waiting after 10 s (bound 100 ms)", what)
		}
	}
}

// replicatedKV answers a Create the way a replicated bucket may when the
// key is taken: the stream's "wrong last sequence" API error in its
// constant form, which errors.Is(err, jetstream.ErrKeyExists) does not
// recognise.
type replicatedKV struct{ jetstream.KeyValue }

func (replicatedKV) Create(context.Context, string, []byte, ...jetstream.KVCreateOpt) (uint64, error) {
	return 0, &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence: 7"}
}

// Create says ErrExists for a taken key in whichever form JetStream
// reports it: an owner that treats "exists" as "already done" (a
// redelivered request) must not take a replicated bucket's answer for a
// failure.
func TestCreateOfATakenKeyOnAReplicatedBucket(t *testing.T) {
	s, ctx := newStore(t)
	replicated := record.New[counter](replicatedKV{s.KV()}, "counter")
	if _, err := replicated.Create(ctx, "a", &counter{N: 1}); !errors.Is(err, record.ErrExists) {
		t.Fatalf("Create = %v, want ErrExists", err)
	}
}

// DeleteIf judges the record as it is when it deletes: one rewritten
// between the read and the delete is read again, and stays if it no
// longer goes.
func TestDeleteIfJudgesTheRecordAsItIs(t *testing.T) {
	s, ctx := newStore(t)
	if _, err := s.Create(ctx, "t", &counter{N: 1}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	deleted, err := s.DeleteIf(ctx, "t", func(c *counter) bool {
		calls++
		if calls == 1 {
			// Another writer rebuilds it after this read.
			if _, err := s.Mutate(ctx, "t", func(c *counter) error { c.N = 2; return nil }); err != nil {
				t.Fatal(err)
			}
		}
		return c.N == 1
	})
	if err != nil || deleted || calls != 2 {
		t.Fatalf("DeleteIf = %v, %v after %d reads; want kept, judged twice", deleted, err, calls)
	}
	if v, _, err := s.Get(ctx, "t"); err != nil || v == nil || v.N != 2 {
		t.Fatalf("record after DeleteIf = %+v, %v; want the rewritten one", v, err)
	}
	if deleted, err := s.DeleteIf(ctx, "t", func(c *counter) bool { return c.N == 2 }); err != nil || !deleted {
		t.Fatalf("DeleteIf of the current value = %v, %v; want deleted", deleted, err)
	}
	if deleted, err := s.DeleteIf(ctx, "t", func(*counter) bool { return true }); err != nil || deleted {
		t.Fatalf("DeleteIf of a missing record = %v, %v; want nothing, no error", deleted, err)
	}
}

// A key's removal is told by its marker's header; a value has none.
func TestIsRemoval(t *testing.T) {
	for op, want := range map[string]bool{"DEL": true, "PURGE": true, "": false, "PUT": false} {
		h := nats.Header{}
		if op != "" {
			h.Set("KV-Operation", op)
		}
		if got := record.IsRemoval(h); got != want {
			t.Errorf("KV-Operation %q: IsRemoval %v, want %v", op, got, want)
		}
	}
}
