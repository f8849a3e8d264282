// Package natsembed runs nats-server with JetStream inside this process:
// the NATS of `podvisor up` (one node, or one node of a cluster per
// process) and of the tests. It is apart from package bus so that the
// services, which are only clients of NATS, do not link the server: a
// service process then maps a smaller executable and initialises fewer
// packages at start.
//
//	srv, err := natsembed.Start(natsembed.Config{Dir: stateDir + "/nats", Auth: authority})
//	defer srv.Shutdown()
//	b, err := bus.Dial(ctx, bus.ConnConfig{URL: srv.URL(), CredsFile: authority.CredsPath("admin")})
package natsembed
