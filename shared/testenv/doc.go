// Package testenv is the one test environment of podvisor's services, in
// the manner of go-cloud's drivertest: it starts the real parts a service
// talks to — an embedded JetStream server (bustest), a simulated vCenter
// (simtest), a redis-server (redistest) — and any subset of services
// in-process, and it waits on facts instead of sleeping:
//
//	e := testenv.Start(t, testenv.Datacenter(sim.Config{Clusters: 1, HostsPerCluster: 2}))
//	e.Run("netconfig", svc.Run)                       // until the test ends
//	seq := e.Publish(&events.PodScheduled{…})           // as its owner, the scheduler
//	f := testenv.Wait(e, func(p *events.PodNetworkFailed) bool { return p.Name == "web" })
//	e.WaitHandled(events.StreamPods, "netconfig-PODS", seq) // the event was handled …
//	if n := e.Events.Count(events.TypePodNetworkAttached); n != 0 { … } // … so "nothing" means something
//
// Every event published on a stream's subject is recorded (Env.Events)
// with its decoded payload (request/reply subjects, pv.query.>, are left
// alone: a request nobody serves gets "no responders" at once); Wait,
// WaitN, All and CountIDs read the recorder by payload type, the catalog
// giving the CloudEvent type. Record helpers (Put, Get, List)
// read and write a KV bucket as the record owners do. A wait that times out
// fails the test with what it was waiting for and what the bus carried.
//
// A test plays the services that are not under test with the pod fixtures
// (Pod, Accepted, Env.Accept: the record, then pod.accepted, as the
// provisioner does) and Env.Follow, which hands a stand-in every new event
// once per id on a goroutine of its own; Distinct and WaitSeen read the
// recorder as a JetStream consumer sees it, each id once.
//
// "Nothing happened" is only an assertion once the event that could have
// made it happen was handled: WaitHandled waits for a consumer's ack floor
// to pass the event's stream sequence, the fact, where a sleep would only
// hope.
package testenv
