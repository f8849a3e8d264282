// Package vmotion is the migration service's window on vCenter: where a pod
// VM runs, whether a host can take it, the vMotion (RelocateVM) task with its
// progress, maintenance mode, and the removal of pod VMs left behind on a
// host that came back after its pods were restarted elsewhere.
//
// It checks what vCenter would check before a vMotion and the simulator does
// not (vcsim relocates onto a disconnected host, a host in maintenance, or a
// host without the VM's datastore, and the last crashes it on the next disk
// operation): callers run Check before Relocate.
package vmotion
