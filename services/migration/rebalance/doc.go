// Package rebalance plans migrations that even out the load of hosts: pods
// move from the most loaded hosts to the least loaded ones, within each
// host's capacity and the network rules (a pod only goes where every one of
// its networks is realized and its datastores are mounted).
//
// It only plans. `podvisor rebalance` publishes one migration.requested per
// move with the target named; the scheduler then reserves the room (and may
// still refuse, if the world changed), and the migration service runs the
// moves within its per-host and per-cluster limits like any others.
//
// A host's load is the larger of its CPU and memory shares (allocated over
// capacity), counting the pods the records place on it. A move is planned
// only if it lowers the higher of the two hosts' loads, so the plan never
// makes the spread worse and always ends.
package rebalance
