// Package deps is what every podvisor service is built from besides its
// Config: the connections its process opened for it (the bus, the vCenter
// session, Redis) and its logger.
//
// The process that runs a service (`podvisord serve` or `podvisor serve`, the all-in-one of
// `podvisor up`, a test) opens the connections, hands them over in one
// Deps and closes them after the service's Run returns; a service neither
// opens nor closes any. Each service's New says which it needs with
// Require, so a missing one is reported the same way everywhere, naming the
// field and why the service needs it, before anything starts.
package deps
