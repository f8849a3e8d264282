package migration

import (
	"slices"
	"strings"
	"testing"
)

func ids(ss []slot) []string {
	out := make([]string, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.id)
	}
	return out
}

func TestLimiter(t *testing.T) {
	tests := []struct {
		name        string
		limits      Limits
		queue       []slot
		wantStarted []string
		wantWaiting map[string]string // id → substring of why
	}{
		{
			name:   "two per source host, third waits",
			limits: Limits{PerSourceHost: 2, PerCluster: 5},
			queue: []slot{
				{id: "a", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c1"},
				{id: "b", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c1"},
				{id: "c", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c1"},
			},
			wantStarted: []string{"a", "b"},
			wantWaiting: map[string]string{"c": "leave h1 (limit 2 per source host)"},
		},
		{
			name:   "a full host does not hold back another host",
			limits: Limits{PerSourceHost: 1, PerCluster: 5},
			queue: []slot{
				{id: "a", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c1"},
				{id: "b", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c1"},
				{id: "c", sourceHost: "h2", sourceCluster: "c1", targetCluster: "c1"},
			},
			wantStarted: []string{"a", "c"},
			wantWaiting: map[string]string{"b": "h1"},
		},
		{
			name:   "cluster limit across hosts",
			limits: Limits{PerSourceHost: 2, PerCluster: 3},
			queue: []slot{
				{id: "a", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c1"},
				{id: "b", sourceHost: "h2", sourceCluster: "c1", targetCluster: "c1"},
				{id: "c", sourceHost: "h3", sourceCluster: "c1", targetCluster: "c1"},
				{id: "d", sourceHost: "h4", sourceCluster: "c1", targetCluster: "c1"},
				{id: "e", sourceHost: "h5", sourceCluster: "c2", targetCluster: "c2"},
			},
			wantStarted: []string{"a", "b", "c", "e"},
			wantWaiting: map[string]string{"d": "touch c1 (limit 3 per cluster)"},
		},
		{
			name:   "a cross-cluster move counts in the target cluster too",
			limits: Limits{PerSourceHost: 2, PerCluster: 1},
			queue: []slot{
				{id: "a", sourceHost: "h1", sourceCluster: "c1", targetCluster: "c2"},
				{id: "b", sourceHost: "h5", sourceCluster: "c2", targetCluster: "c2"},
			},
			wantStarted: []string{"a"},
			wantWaiting: map[string]string{"b": "c2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(tt.limits)
			for _, s := range tt.queue {
				l.enqueue(s)
				l.enqueue(s) // idempotent
			}
			if got := ids(l.next()); !slices.Equal(got, tt.wantStarted) {
				t.Fatalf("started %v, want %v", got, tt.wantStarted)
			}
			w := l.waiting()
			if len(w) != len(tt.wantWaiting) {
				t.Fatalf("waiting %v, want %v", w, tt.wantWaiting)
			}
			for id, sub := range tt.wantWaiting {
				if !strings.Contains(w[id].why, sub) {
					t.Errorf("%s waits because %q, want it to mention %q", id, w[id].why, sub)
				}
			}
		})
	}
}

func TestLimiterDoneFreesRoomInOrder(t *testing.T) {
	l := newLimiter(Limits{PerSourceHost: 1, PerCluster: 5})
	for _, id := range []string{"a", "b", "c"} {
		l.enqueue(slot{id: id, sourceHost: "h1", sourceCluster: "c1"})
	}
	if got := ids(l.next()); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("first pass started %v", got)
	}
	if w := l.waiting(); w["b"].position != 0 || w["c"].position != 1 {
		t.Fatalf("positions %+v, want b=0 c=1", w)
	}
	l.enqueue(slot{id: "a", sourceHost: "h1", sourceCluster: "c1"}) // running: ignored
	if got := ids(l.next()); len(got) != 0 {
		t.Fatalf("started %v while h1 is full", got)
	}
	l.done("a")
	if got := ids(l.next()); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("after a finished, started %v, want [b]", got)
	}
	if !l.remove("c") || l.remove("c") {
		t.Fatal("remove of a queued migration must succeed once")
	}
	if l.remove("b") {
		t.Fatal("remove of a running migration must report false")
	}
	l.done("b")
	l.done("b") // twice is harmless
	if l.byHost["h1"] != 0 || l.byCluster["c1"] != 0 {
		t.Fatalf("counts not back to zero: %v %v", l.byHost, l.byCluster)
	}
}

func TestDrainMigrationID(t *testing.T) {
	id := drainMigrationID("esx 1/01", 2, "9b1deb4d-3b7d")
	if id != "drain-esx-1-01-2-9b1deb4d-3b7d" {
		t.Fatalf("id = %q", id)
	}
	long := drainMigrationID(strings.Repeat("h", 200), 1, strings.Repeat("u", 100))
	if len(long) > 128 {
		t.Fatalf("id of %d characters, want at most 128", len(long))
	}
}
