package events

import (
	"strings"
	"testing"
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
