package bus

import (
	"context"
	"sync"
)

// keyedQueue holds the messages a consumer has fetched and not yet settled.
// Messages with the same key run one at a time, in the order they arrived;
// messages with different keys run in parallel on the workers. A key is on
// the ready list at most once and never while one of its messages runs,
// which is what makes the one-per-key guarantee hold without per-key locks.
type keyedQueue[T any] struct {
	mu      sync.Mutex
	cond    *sync.Cond
	byKey   map[string][]*T // per-key FIFO; the head is running when running[key]
	running map[string]bool
	ready   []string // keys whose head may start, oldest first
	size    int      // queued + running
	closed  bool
}

func newKeyedQueue[T any]() *keyedQueue[T] {
	q := &keyedQueue[T]{byKey: map[string][]*T{}, running: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// add appends item to key's FIFO. It reports false when the queue is closed.
func (q *keyedQueue[T]) add(key string, item *T) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	pending := q.byKey[key]
	q.byKey[key] = append(pending, item)
	q.size++
	if len(pending) == 0 {
		q.ready = append(q.ready, key)
	}
	q.cond.Broadcast()
	return true
}

// next blocks until some key's head can run, marks the key running and
// returns it. ok is false once the queue is closed.
func (q *keyedQueue[T]) next() (key string, item *T, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.ready) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", nil, false
	}
	key = q.ready[0]
	q.ready = q.ready[1:]
	q.running[key] = true
	return key, q.byKey[key][0], true
}

// done removes key's running head and makes the key ready again if more of
// its messages wait.
func (q *keyedQueue[T]) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, key)
	rest := q.byKey[key][1:]
	q.size--
	if len(rest) == 0 {
		delete(q.byKey, key)
	} else {
		q.byKey[key] = rest
		if !q.closed {
			q.ready = append(q.ready, key)
		}
	}
	q.cond.Broadcast()
}

// waitBelow blocks until fewer than limit items are held, the queue closes
// or ctx ends, and returns how many more may be taken (0 when it gave up).
func (q *keyedQueue[T]) waitBelow(ctx context.Context, limit int) int {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		q.cond.Broadcast()
		q.mu.Unlock()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.size >= limit && !q.closed && ctx.Err() == nil {
		q.cond.Wait()
	}
	if q.closed || ctx.Err() != nil {
		return 0
	}
	return limit - q.size
}

// snapshot returns every held item, queued or running.
func (q *keyedQueue[T]) snapshot() []*T {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]*T, 0, q.size)
	for _, items := range q.byKey {
		out = append(out, items...)
	}
	return out
}

// close stops handing out work and returns the items that never started,
// which the caller gives back to the server. Running items stay until done.
func (q *keyedQueue[T]) close() []*T {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	var unstarted []*T
	for key, items := range q.byKey {
		if q.running[key] {
			unstarted = append(unstarted, items[1:]...)
			q.byKey[key] = items[:1]
		} else {
			unstarted = append(unstarted, items...)
			delete(q.byKey, key)
		}
	}
	q.size -= len(unstarted)
	q.ready = nil
	q.cond.Broadcast()
	return unstarted
}

// len is the number of held items.
func (q *keyedQueue[T]) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.size
}
