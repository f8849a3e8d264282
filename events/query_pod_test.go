package events

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestPodQueriesValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		req   interface{ Validate() error }
		field string
	}{
		{"logs ok", &PodLogsRequest{Namespace: "default", Name: "web", TailLines: 10}, ""},
		{"logs no name", &PodLogsRequest{Namespace: "default"}, "name"},
		{"logs negative tail", &PodLogsRequest{Namespace: "default", Name: "web", TailLines: -1}, "tailLines"},
		{"logs follow previous", &PodLogsRequest{Namespace: "default", Name: "web", Follow: true, Previous: true}, "follow"},
		{"logs fromEnd with tailLines", &PodLogsRequest{Namespace: "default", Name: "web", FromEnd: true, TailLines: 3}, "fromEnd"},
		{"logs fromEnd", &PodLogsRequest{Namespace: "default", Name: "web", FromEnd: true, Follow: true}, ""},
		{"logs line times", &PodLogsRequest{Namespace: "default", Name: "web", Timestamps: true, SinceTime: &time.Time{}}, "sinceTime"},
		{"logs negative limit", &PodLogsRequest{Namespace: "default", Name: "web", LimitBytes: -1}, "limitBytes"},
		{"logs limit and since", &PodLogsRequest{Namespace: "default", Name: "web", LimitBytes: 1, SinceTime: new(time.Now())}, ""},
		{"exec ok", &PodExecRequest{Namespace: "default", Name: "web", Command: []string{"cat", "/x"}}, ""},
		{"exec no command", &PodExecRequest{Namespace: "default", Name: "web"}, "command"},
		{"exec stdin window", &PodExecRequest{Namespace: "default", Name: "web", Command: []string{"cat"}, Stdin: true, StdinWindow: 1 << 18}, ""},
		{"exec window without stdin", &PodExecRequest{Namespace: "default", Name: "web", Command: []string{"cat"}, StdinWindow: 1 << 18}, "stdinWindow"},
		{"exec negative window", &PodExecRequest{Namespace: "default", Name: "web", Command: []string{"cat"}, Stdin: true, StdinWindow: -1}, "stdinWindow"},
		{"exec wildcard", &PodExecRequest{Namespace: "default", Name: "w*", Command: []string{"ls"}}, "name: Invalid value"},
		// metadata.name is a DNS subdomain: a dot is valid (the name travels
		// in the payload, not in the subject).
		{"logs dotted name", &PodLogsRequest{Namespace: "default", Name: "web.v1"}, ""},
		{"exec dotted name", &PodExecRequest{Namespace: "default", Name: "web.v1", Command: []string{"hostname"}}, ""},
		{"exec subject wildcard", &PodExecRequest{Namespace: "default", Name: "web.>", Command: []string{"ls"}}, "RFC 1123 subdomain"},
		{"logs dotted namespace", &PodLogsRequest{Namespace: "team.a", Name: "web"}, "namespace: Invalid value"},
		{"logs no namespace", &PodLogsRequest{Name: "web"}, "namespace: Required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tc.field)
			}
		})
	}
	if got := SubjectPodLogs("esx-1-01"); got != "pv.query.pod.logs.esx-1-01" {
		t.Errorf("SubjectPodLogs = %s", got)
	}
}

// A stdin control carries its piece number; one without (a keep-alive of
// a client that sends none, or an older client's) encodes as before, so
// an older host agent reads what it always read, and decodes as 0 (not
// numbered).
func TestPodStreamControlNumbersStdinPieces(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    PodStreamControl
		want string
	}{
		{"a keep-alive without pieces", PodStreamControl{}, `{}`},
		{"a piece", PodStreamControl{Stdin: []byte("a"), StdinSeq: 1}, `{"stdin":"YQ==","stdinSeq":1}`},
		{"the end", PodStreamControl{StdinEOF: true, StdinSeq: 2}, `{"stdinEOF":true,"stdinSeq":2}`},
		{"a keep-alive after pieces", PodStreamControl{StdinSeq: 2}, `{"stdinSeq":2}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := json.Marshal(tc.c)
			if err != nil || string(data) != tc.want {
				t.Fatalf("encoded %s (%v), want %s", data, err, tc.want)
			}
		})
	}
	var old PodStreamControl
	if err := json.Unmarshal([]byte(`{"stdin":"YQ=="}`), &old); err != nil || old.StdinSeq != 0 {
		t.Fatalf("an older client's piece decoded as %+v (%v), want it not numbered", old, err)
	}
}
