// Package events is the contract between podvisor's services: the catalog
// of CloudEvents they exchange over NATS JetStream, the Go struct of every
// payload, and the validation and sizing rules every service must agree on.
// It has no transport: shared/bus publishes and consumes what is defined here.
package events
