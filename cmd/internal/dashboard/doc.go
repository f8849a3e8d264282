// Package dashboard is podvisor's operator view, read-only: hosts and their
// allocation, pods and where they run, networks, image chains, migrations,
// a chart of pods per phase and a live event feed, with each pod's trace
// waterfall and log lines one click away.
//
// The page is static (web/); it reads GET /api/state once and then follows
// /api/stream, a server-sent-event stream of state snapshots and
// CloudEvents. Everything it shows is inserted as text, never as markup, and
// the Content-Security-Policy lets only the page's own scripts run.
//
// A View is the read model behind it: KV watches of the buckets the page
// shows and ordered consumers of the streams of the feed, so a page view
// costs NATS nothing. It needs only read access: the dashboard identity of
// shared/bus may read those streams and buckets and publish nothing.
//
// Two processes serve it: `podvisor up` (the status page, with the spans
// and log lines of its in-process services) and `podvisor serve dashboard`
// (a Deployment of the production overlay, over mutual TLS, asking for
// traces over NATS where a recorder answers).
package dashboard
