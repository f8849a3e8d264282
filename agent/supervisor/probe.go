package supervisor

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// probe runs c's probes against one instance as the kubelet does: the
// startup probe first (liveness and readiness wait for it), then liveness
// (failureThreshold failures in a row kill the instance, which the restart
// policy may then restart) and readiness (which sets Ready).
//
// Once the pod's stop began, the startup and liveness probes end (a check
// in flight is cancelled and counts for nothing), as the kubelet stops
// them for a terminating pod: the stop already ends the instance, and a
// check of the dying process would only fail and ask for another kill.
// Readiness goes on until the instance ends, so a container that stops
// serving during its grace period is shown not ready, as in Kubernetes.
func (p *Pod) probe(ctx context.Context, c *guestchannel.Container, inst *instance) {
	grace := time.Duration(p.cfg.Spec.TerminationGracePeriodSeconds) * time.Second
	readinessCtx := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	if c.StartupProbe != nil {
		ok := p.runProbe(ctx, c, inst, c.StartupProbe, func(passed bool) bool {
			if passed {
				return false // done
			}
			return true
		}, func(err error) {
			p.killInstance(c.Name, "startup probe failed: "+err.Error(), grace)
		})
		if !ok {
			return
		}
		p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
			s.Started = true
			if c.ReadinessProbe == nil {
				s.Ready = true
			}
		})
	}
	if c.ReadinessProbe != nil {
		go p.runProbe(readinessCtx, c, inst, c.ReadinessProbe, func(passed bool) bool {
			p.board.update(c.Name, func(s *guestchannel.ContainerStatus) {
				if s.State.Kind == guestchannel.StateRunning {
					s.Ready = passed
				}
			})
			return true
		}, nil)
	}
	if c.LivenessProbe != nil {
		p.runProbe(ctx, c, inst, c.LivenessProbe, func(bool) bool { return true }, func(err error) {
			p.killInstance(c.Name, "liveness probe failed: "+err.Error(), grace)
		})
	}
}

// runProbe probes every period. A verdict is reached after successThreshold
// passes or failureThreshold failures in a row; verdict is told it and
// returns whether to go on. failed (may be nil) runs on a failing verdict,
// told the last check's error (the cause a kill reports), after which the
// probe stops. runProbe returns true when verdict stopped it on a pass.
func (p *Pod) runProbe(ctx context.Context, c *guestchannel.Container, inst *instance, pr *guestchannel.Probe,
	verdict func(passed bool) bool, failed func(error)) bool {
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	success, failure := max(pr.SuccessThreshold, 1), max(pr.FailureThreshold, 1)
	select {
	case <-time.After(time.Duration(pr.InitialDelaySeconds) * time.Second):
	case <-ctx.Done():
		return false
	}
	var passes, fails int32
	last := -1 // unknown
	for {
		err := p.check(ctx, inst, pr, timeout)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			passes, fails = passes+1, 0
		} else {
			fails, passes = fails+1, 0
			p.cfg.Log.Debug("probe failed", "container", c.Name, "err", err)
		}
		switch {
		case passes >= success && last != 1:
			last = 1
			if !verdict(true) {
				return true
			}
		case fails >= failure && last != 0:
			last = 0
			if failed != nil {
				failed(err)
				return false
			}
			if !verdict(false) {
				return false
			}
		}
		select {
		case <-time.After(period):
		case <-ctx.Done():
			return false
		}
	}
}

// check runs one probe action.
func (p *Pod) check(ctx context.Context, inst *instance, pr *guestchannel.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host := func(h string) string {
		if h == "" {
			return "127.0.0.1" // the pod's network namespace is the guest's
		}
		return h
	}
	switch {
	case pr.Exec != nil:
		code, err := p.execIn(ctx, inst, pr.Exec.Command)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %q exited with %d", strings.Join(pr.Exec.Command, " "), code)
		}
		return nil
	case pr.HTTPGet != nil:
		scheme := "http"
		if pr.HTTPGet.Scheme == "HTTPS" {
			scheme = "https"
		}
		path := pr.HTTPGet.Path
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		url := scheme + "://" + net.JoinHostPort(host(pr.HTTPGet.Host), strconv.Itoa(int(pr.HTTPGet.Port))) + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "podvm-agent-probe")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			// The kubelet's words, which a kill's message then carries.
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case pr.TCPSocket != nil:
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host(pr.TCPSocket.Host), strconv.Itoa(int(pr.TCPSocket.Port))))
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("probe: no action")
}

// execIn runs cmd in the instance, discarding its output.
func (p *Pod) execIn(ctx context.Context, inst *instance, cmd []string) (int32, error) {
	st, err := p.exec(ctx, inst, cmd, nil, func(string, []byte) {})
	if err != nil {
		return 0, err
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	return int32(st.ExitCode()), nil
}
