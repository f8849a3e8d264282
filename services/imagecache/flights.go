package imagecache

import (
	"context"
	"sync"
)

// flights runs one piece of work per key for every caller that asks for it
// while it runs, as singleflight does, with one difference: the work has a
// context of its own, which ends when the last caller waiting for it has
// left, not when the one that happened to start it does. A pod deleted
// while its image is pulled stops waiting (its context ends) without
// failing the pull for another pod of the image that waits for it too;
// the pull stops once no pod waits for it any more.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done    chan struct{}
	val     any
	err     error
	waiters int
	cancel  context.CancelFunc
}

// do returns the outcome of fn for key, run once for the callers that ask
// meanwhile, or ctx's error as soon as ctx ends. fn's context keeps ctx's
// values (the trace) but not its end.
func (f *flights) do(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	fl, ok := f.m[key]
	if !ok {
		work, cancel := context.WithCancel(context.WithoutCancel(ctx))
		fl = &flight{done: make(chan struct{}), cancel: cancel}
		if f.m == nil {
			f.m = map[string]*flight{}
		}
		f.m[key] = fl
		go func() {
			defer cancel()
			fl.val, fl.err = fn(work)
			f.mu.Lock()
			f.forget(key, fl)
			f.mu.Unlock()
			close(fl.done)
		}()
	}
	fl.waiters++
	f.mu.Unlock()
	select {
	case <-fl.done:
		return fl.val, fl.err
	case <-ctx.Done():
		f.mu.Lock()
		if fl.waiters--; fl.waiters == 0 {
			// Nobody waits any more: the work stops, and a caller that
			// comes now starts it afresh rather than joining its end.
			fl.cancel()
			f.forget(key, fl)
		}
		f.mu.Unlock()
		return nil, ctx.Err()
	}
}

// forget removes fl from the map if it is still key's flight (f.mu held).
func (f *flights) forget(key string, fl *flight) {
	if f.m[key] == fl {
		delete(f.m, key)
	}
}
