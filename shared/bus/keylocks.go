package bus

import "sync"

// KeyLocks serializes work on one object within a process when events
// keyed differently touch it (a network is changed by network events and
// used by pod events, each under its own work-queue key), or when one
// service reads the same key from two streams (a pod's events and its
// migration's) or touches it outside the bus (drift repair). The consumer's
// keyed queue runs one handler per event key at a time within one consumer
// only; KeyLocks is for the rest. Across replicas, compare-and-set on the
// records keeps writes consistent. An entry lives while someone holds or
// waits for its key, so a process that sees a key per pod does not keep one
// lock per pod it ever saw. The zero value is ready to use.
type KeyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	sync.RWMutex
	refs int // holders and waiters; the entry goes when it drops to 0
}

func (k *KeyLocks) acquire(key string) *keyLock {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	l, ok := k.m[key]
	if !ok {
		l = &keyLock{}
		k.m[key] = l
	}
	l.refs++
	return l
}

func (k *KeyLocks) release(key string, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		delete(k.m, key)
	}
}

// Lock takes key exclusively and returns the unlock.
func (k *KeyLocks) Lock(key string) func() {
	l := k.acquire(key)
	l.Lock()
	return func() {
		l.Unlock()
		k.release(key, l)
	}
}

// RLock takes key shared and returns the unlock: holders of RLock run
// together, none while Lock is held.
func (k *KeyLocks) RLock(key string) func() {
	l := k.acquire(key)
	l.RLock()
	return func() {
		l.RUnlock()
		k.release(key, l)
	}
}

// held is the number of keys with a holder or a waiter (tests).
func (k *KeyLocks) held() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m)
}
