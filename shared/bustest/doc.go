// Package bustest starts a real NATS JetStream server for tests: in-process,
// on a random loopback port, with its store in the test's temporary
// directory, stopped by the test's cleanup.
//
//	b := bustest.Start(t) // connected, topology declared
//	err := b.Publish(ctx, ev)
//
// StartServer and StartServerIn give the bare server (StartServerIn on a
// chosen directory, to restart on the same store); Connect opens one more
// client on it, for a test that plays two processes.
//
// Every service's tests use it, so that they all exercise the same streams,
// consumers and KV buckets as production rather than a fake.
package bustest
