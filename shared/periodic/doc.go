// Package periodic runs the background loops of services: a resync, a
// sweep, a flush of buffered records, each every interval until the
// service stops. Every service wrote the same ticker, select and "log the
// error unless we are stopping" by hand; this is that loop, once.
package periodic
