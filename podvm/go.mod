module github.com/podvisor/podvisor/podvm

go 1.26.0

replace github.com/podvisor/podvisor/agent => ../agent

require (
	github.com/cavaliergopher/cpio v1.0.1
	github.com/podvisor/podvisor/agent v0.0.0
	golang.org/x/sys v0.49.0
)
