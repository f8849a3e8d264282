module github.com/podvisor/podvisor/agent

go 1.26.0

require (
	github.com/opencontainers/runtime-spec v1.3.0
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	golang.org/x/sys v0.49.0
)

require github.com/creack/pty v1.1.24

require github.com/cyphar/filepath-securejoin v0.7.0
