package bus

// KeyLocksHeld exposes the number of live KeyLocks entries to the tests.
func KeyLocksHeld(k *KeyLocks) int { return k.held() }
