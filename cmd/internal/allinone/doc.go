// Package allinone is `podvisor up`: one process that starts a complete
// simulated datacenter and every service, for a laptop or a CI job.
//
// Start brings the parts up in dependency order, each either embedded or
// replaced by an external endpoint:
//
//	NATS JetStream  embedded nats-server, file storage in <state-dir>/nats   (--nats-url)
//	vCenter         embedded vcsim datacenter, login required                (--vcenter-url)
//	Redis           redis-server from PATH (port kept, below), else an embedded
//	                Redis-protocol server (said loudly)                      (--redis-url)
//	OCI registry    embedded registry seeded with sample images             (--registry)
//	services        the five services in-process                            (--services)
//
// It then writes <state-dir>/env with shell exports of every endpoint, so that
// `source ~/.podvisor/env` points govc, the nats CLI and podvisor at it.
//
// Addresses outlive the run that handed them out (guest cluster workers'
// user data, image references in records, CLI contexts), so
// <state-dir>/ports.json remembers the ports of the last run: each server
// takes a port flag's port the user gave when that is free, else the
// previous run's port, else the flag's default, else a fresh one (said in
// the output, with the ports found taken and what the move breaks).
//
// The vCenter simulator keeps its inventory in memory, so a second `up` on the
// same state dir resumes from the durable parts (streams and KV records in
// NATS) and the provisioner's drift repair recreates the pod VMs that the new
// simulator lacks.
package allinone
