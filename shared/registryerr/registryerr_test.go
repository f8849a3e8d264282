package registryerr_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/podvisor/podvisor/shared/registryerr"
)

// A pull from a server answering body with 404, through go-containerregistry.
func pullError(t *testing.T, contentType, body string) error {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	ref, err := name.ParseReference(strings.TrimPrefix(srv.URL, "http://")+"/podvisor/vmos:1.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	_, err = remote.Image(ref, remote.WithContext(context.Background()))
	if err == nil {
		t.Fatal("pull from a server answering 404 succeeded")
	}
	return err
}

func TestBrief(t *testing.T) {
	page := "<!DOCTYPE HTML>\n<html><head><title>Error response</title></head><body><h1>Error response</h1><p>Error code: 404</p></body></html>\n"
	for _, tc := range []struct {
		name, contentType, body string
		want, notWant           string
	}{
		{"an HTML page", "text/html", page, "unexpected status code 404 Not Found (its body, ", "<"},
		{"a long text", "text/plain", strings.Repeat("x", 300), "(its body, 300 bytes, left out)", "xxx"},
		{"a short reason", "text/plain", "no such repository\n", "404 Not Found: no such repository", "left out"},
		{"structured errors", "application/json", `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`, "MANIFEST_UNKNOWN", "left out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := pullError(t, tc.contentType, tc.body)
			got := registryerr.Brief(err)
			if !strings.Contains(got.Error(), tc.want) || strings.Contains(got.Error(), tc.notWant) {
				t.Errorf("Brief(%q) = %q; want it to hold %q and not %q", err, got, tc.want, tc.notWant)
			}
			var terr *transport.Error
			if !errors.As(got, &terr) || terr.StatusCode != http.StatusNotFound || !errors.Is(got, err) {
				t.Errorf("Brief(%q) = %q does not wrap the registry's error", err, got)
			}
		})
	}
	if err := errors.New("connection refused"); registryerr.Brief(err) != err {
		t.Errorf("Brief of an error that is no registry's response changed it")
	}
}
