// Package cli implements the podvisor command line with cobra.
//
// Every verb that changes something publishes a CloudEvent, exactly as any
// other client would; every verb that reads goes to the services' read models
// (JetStream KV buckets, the Redis image cache) or to the stored event
// history. The CLI never talks to a service directly.
//
// Where the CLI finds the system: --nats-url, else PODVISOR_NATS_URL, else the
// env file that `podvisor up` writes into its state directory
// (~/.podvisor/env by default).
package cli
