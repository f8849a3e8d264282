// Package e2e is podvisor's end-to-end suite. It runs the built binary the
// way a user does and judges the outcome only through clients that do not
// belong to podvisor: a govmomi client of the vCenter (GOVC_URL of the env
// file), raw NATS clients, and the CLI's own output.
//
// The tests carry the build tag e2e, so `go test ./...` of the workspace
// skips them; run them with
//
//	make test-e2e                       # builds bin/podvisor, then the suite
//	cd e2e && PODVISOR_BIN=../bin/podvisor go test -tags e2e -v ./...
//
// Without PODVISOR_BIN the suite builds the binary itself into a temporary
// directory.
//
// What each test does:
//
//   - TestPods (scenarios_test.go): `podvisor up`, a scoped network
//     `frontend` on cluster-1 declared with `apply -f`, 100 pods across two
//     networks and the three seeded images. vSphere must then show one
//     powered-on VM per pod on the host podvisor names, with the memory of the
//     sizing function, NICs on the pods' port groups, frontend pods only on
//     cluster-1 hosts, and no address twice. Then, on the same datacenter:
//     migrate one pod (the VM is on the target), drain a host (empty and in
//     maintenance mode), fail a host (its pods run elsewhere; its dead VMs go
//     once it recovers), and delete every pod (no VM is left).
//   - TestRepeatedRequests: every pod.requested published three times, in
//     binary mode with one id, in structured mode as `nats pub` sends it (no
//     headers, so the stream keeps all three copies) and with three ids:
//     exactly one VM per pod.
//   - TestMalformedEvents: a body that is not a CloudEvent and CloudEvents
//     whose data is not a pod land in the DLQ stream with a reason; no pod
//     record and no VM is made for them.
//   - TestCrashConvergence (crash_test.go): NATS in its own process
//     (internal/natsd, file storage), `podvisor up --services=none` for the
//     simulator, Redis and the registry, and each service as its own
//     `podvisor serve` process. While 300 pods are applied a random service is
//     killed with SIGKILL every few seconds and started again, and NATS is
//     restarted once. At the end every pod must be Running with zero
//     duplicate or orphan VMs, zero orphan pod disks, and zero leaked
//     addresses or ledger allocations; the counts are printed.
package e2e
