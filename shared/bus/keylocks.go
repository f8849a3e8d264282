package bus

import "sync"

// KeyLocks serializes work on one object within a process when events
// keyed differently touch it (a network is changed by network events and
// used by pod events, each under its own work-queue key). The consumer's
// keyed queue already runs one handler per event key at a time; KeyLocks
// is for the object a handler reaches beyond its key. Across replicas,
// compare-and-set on the records keeps writes consistent. The zero value
// is ready to use.
type KeyLocks struct {
	mu sync.Mutex
	m  map[string]*sync.RWMutex
}

func (k *KeyLocks) get(key string) *sync.RWMutex {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[string]*sync.RWMutex{}
	}
	l, ok := k.m[key]
	if !ok {
		l = &sync.RWMutex{}
		k.m[key] = l
	}
	return l
}

// Lock takes key exclusively and returns the unlock.
func (k *KeyLocks) Lock(key string) func() {
	l := k.get(key)
	l.Lock()
	return l.Unlock
}

// RLock takes key shared and returns the unlock: holders of RLock run
// together, none while Lock is held.
func (k *KeyLocks) RLock(key string) func() {
	l := k.get(key)
	l.RLock()
	return l.RUnlock
}
