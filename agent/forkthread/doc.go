// Package forkthread starts child processes from a few OS threads that live
// as long as the process.
//
// A child started with Pdeathsig (SysProcAttr) is sent that signal when the
// thread that forked it ends, not when the process does (go.dev/issue/27505).
// The Go runtime ends a thread whenever a goroutine exits while locked to it,
// as code that enters another network namespace and cannot come back does.
// A child forked from such a thread dies with it, seconds into its life and
// for no reason it could report. Start forks every child from threads that
// never end: goroutines locked to them for the life of the process.
package forkthread
