// Package redisserver starts a Redis server for processes and tests that need
// one on this machine: `podvisor up` runs the image metadata cache this way,
// and shared/redistest wraps it for tests.
//
// Start runs the `redis-server` found on PATH, bound to 127.0.0.1 on a free
// port, and waits until it answers PING:
//
//	srv, err := redisserver.Start(ctx, stateDir)
//	if err != nil { ... }
//	defer srv.Close()
//	opts, _ := redis.ParseURL(srv.URL())
//
// With an empty dir the server keeps nothing on disk (--save "" --appendonly
// no): Redis is a cache in podvisor, and losing it costs re-scans, never data.
// With a dir, the server writes an append-only file there so that restarting
// `podvisor up` finds its metadata again.
//
// Where no redis-server is installed, StartEmbedded serves the Redis protocol
// from inside the process with miniredis and says so loudly in the log:
// miniredis keeps its own clock (key expiry only moves when told) and lacks
// some commands (CLIENT, CONFIG, FUNCTION), so it is a convenience for trying
// podvisor out, not something to run a cluster on.
package redisserver
