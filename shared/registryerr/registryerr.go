// Package registryerr words a registry's error for the people who read it
// in a pod's or a VM's message, conditions and events.
//
// go-containerregistry puts the whole body of an error response in its
// error when the registry sent no structured errors: a web server on a
// registry's old address, or a proxy, answers with an HTML page, which
// then lands, whole, in a status that says nothing more than the
// response's status does. Brief leaves such a body out; a short
// plain-text body, often the registry's reason, and a registry's
// structured errors are kept.
package registryerr

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// maxBody is the longest plain-text body kept in an error's text.
const maxBody = 200

// Brief returns err worded without an error response's body when that body
// is a web page or longer than a reason; otherwise err itself. What it
// returns wraps err: errors.Is and errors.As see what err holds, so the
// kind of the failure still decides what is done about it.
func Brief(err error) error {
	var terr *transport.Error
	if !errors.As(err, &terr) || len(terr.Errors) > 0 {
		return err
	}
	msg := err.Error()
	status := fmt.Sprintf("unexpected status code %d %s", terr.StatusCode, http.StatusText(terr.StatusCode))
	i := strings.Index(msg, status)
	if i < 0 {
		return err
	}
	body := strings.TrimSpace(strings.TrimPrefix(msg[i+len(status):], ":"))
	if body == "" || (len(body) <= maxBody && !strings.Contains(body, "<")) {
		return err
	}
	return &brief{msg: msg[:i+len(status)] + " (its body, " + strconv.Itoa(len(body)) + " bytes, left out)", err: err}
}

// brief says msg for err, which it wraps.
type brief struct {
	msg string
	err error
}

func (b *brief) Error() string { return b.msg }
func (b *brief) Unwrap() error { return b.err }
