module github.com/podvisor/podvisor/agent

go 1.26.0
