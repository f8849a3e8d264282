package hostagent

import "errors"

var (
	// ErrRefused: a guest's hello names a pod that is not on this host.
	ErrRefused = errors.New("pod is not on this host")
	// ErrNotConnected: the pod's agent has no channel to this host now.
	ErrNotConnected = errors.New("pod agent not connected")
	// ErrChannelClosed: the guest channel closed during a request.
	ErrChannelClosed = errors.New("guest channel closed")
	// ErrStdinLost: a piece of an exec's input did not reach the host
	// agent (core NATS dropped it); the exec is ended.
	ErrStdinLost = errors.New("stdin lost between the client and the host agent")
)
