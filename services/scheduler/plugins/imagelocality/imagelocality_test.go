package imagelocality

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

// fakeReader stands in for the image cache's Redis read model in table
// tests; the Redis path itself is exercised by the service's integration
// test.
type fakeReader struct {
	loc  map[string]float64
	err  error
	seen [][]string
}

func (f *fakeReader) Locality(_ context.Context, images []string) (map[string]float64, error) {
	f.seen = append(f.seen, images)
	return f.loc, f.err
}

func TestScore(t *testing.T) {
	hosts := []*framework.Host{
		fwtest.MakeHost("a").Datastores("shared-ds", "cluster-1-ds").Obj(),
		fwtest.MakeHost("b").Datastores("shared-ds", "cluster-2-ds").Obj(),
		fwtest.MakeHost("c").Datastores("local-c").Obj(),
	}
	tests := []struct {
		name   string
		reader *fakeReader
		want   map[string]int64
	}{
		{"chain ready on one cluster datastore", &fakeReader{loc: map[string]float64{"cluster-1-ds": 1}}, map[string]int64{"a": 100, "b": 0, "c": 0}},
		{"pull in progress counts", &fakeReader{loc: map[string]float64{"cluster-2-ds": 0.6, "shared-ds": 0.25}}, map[string]int64{"a": 25, "b": 60, "c": 0}},
		{"nothing cached", &fakeReader{loc: map[string]float64{}}, map[string]int64{"a": 0, "b": 0, "c": 0}},
		{"redis down is not fatal", &fakeReader{err: errors.New("connection refused")}, map[string]int64{"a": 0, "b": 0, "c": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl := &Plugin{reader: tt.reader}
			pod := fwtest.MakePod("p").Images("podvisor/web:1.0", "podvisor/base:1.0").Info()
			cs := framework.NewCycleState()
			if st := pl.PreScore(context.Background(), cs, pod, hosts); !st.IsSuccess() {
				t.Fatalf("prescore: %v", st)
			}
			if want := [][]string{{"podvisor/web:1.0", "podvisor/base:1.0"}}; !reflect.DeepEqual(tt.reader.seen, want) {
				t.Errorf("reader asked for %v, want %v", tt.reader.seen, want)
			}
			for _, h := range hosts {
				if got, _ := pl.Score(context.Background(), cs, pod, h); got != tt.want[h.Name] {
					t.Errorf("%s: score = %d, want %d", h.Name, got, tt.want[h.Name])
				}
			}
		})
	}
}

func TestOrderDatastores(t *testing.T) {
	pl := &Plugin{reader: &fakeReader{loc: map[string]float64{"z-ds": 0.9}}}
	cs := framework.NewCycleState()
	pl.PreScore(context.Background(), cs, fwtest.MakePod("p").Info(), nil)
	h := fwtest.MakeHost("a").Datastores("b-ds", "a-ds", "z-ds").Obj()
	if got, want := OrderDatastores(cs, h), []string{"z-ds", "a-ds", "b-ds"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
}
