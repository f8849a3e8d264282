// Package deploy holds everything it takes to run podvisor outside the
// all-in-one `podvisor up`, and the tests that keep it honest.
//
// The folders:
//
//	docker/Dockerfile          one image for every process: the podvisor CLI as
//	                           entrypoint (`up`), and podvisord, which the
//	                           services run (`serve <service>`)
//	k8s/base/                  the five services, Redis, network policies and the
//	                           restricted namespace; base/nats is the JetStream
//	                           cluster that the prod overlay adds
//	k8s/overlays/dev/          one replica each, the simulated datacenter
//	                           (`podvisor up --services=none`) as bus and vCenter,
//	                           Jaeger for traces
//	k8s/overlays/tilt/         what `tilt up` deploys: dev with an image per
//	                           service, so a change restarts only that service
//	k8s/overlays/prod/         two replicas per service spread over nodes, a
//	                           three-node NATS with R3 fsync'd streams, Redis on a
//	                           volume, a real vCenter from the Secret podvisor-vcenter
//
// The repository root's Tiltfile (helpers in tilt/) drives the development
// loop in a cluster or, with `tilt up -- --local`, as local processes.
// docs/deploy.md is the guide for people; this package's tests are the check
// that needs no cluster:
//
//   - every overlay is built with the kustomize API and every object is decoded
//     strictly with the Kubernetes API types, so an unknown or misplaced field
//     fails;
//   - each workload is held to the restricted pod security profile, probes,
//     requests and limits, and in prod to its replica and spreading rules;
//   - the network policies are evaluated for the conversations the system
//     needs (allowed) and a few it must not have (denied);
//   - the NATS and Redis configurations are parsed by the real servers;
//   - the Tiltfile is executed in both modes with recording stand-ins for the
//     Tilt builtins, and the Dockerfile is checked for its stages, user and
//     entrypoint.
//
// The packages under internal/ are the machinery of those tests: manifests
// (build and strict decoding), tiltfile (a Tiltfile interpreter that records
// instead of acting) and dockerfile (a small Dockerfile reader).
package deploy
