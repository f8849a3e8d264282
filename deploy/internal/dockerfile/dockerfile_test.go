package dockerfile

import (
	"slices"
	"strings"
	"testing"
)

const sample = `# syntax=docker/dockerfile:1
# check=error=true
# A comment that is not a directive.
FROM --platform=$BUILDPLATFORM golang:1.26 AS builder
WORKDIR /src
RUN --mount=type=cache,target=/go/pkg/mod \
    # a comment inside a continuation
    go build -o /out/app ./cmd/app

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/app /app
USER 65532:65532
ENTRYPOINT ["/app", "serve"]
`

func TestParse(t *testing.T) {
	f, err := Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if f.Directives["syntax"] != "docker/dockerfile:1" || f.Directives["check"] != "error=true" {
		t.Errorf("directives = %v", f.Directives)
	}
	if len(f.Stages) != 2 {
		t.Fatalf("%d stages, want 2", len(f.Stages))
	}
	b, ok := f.Stage("builder")
	if !ok || b.Base != "golang:1.26" || b.Platform != "$BUILDPLATFORM" {
		t.Fatalf("builder stage = %+v", b)
	}
	run, _ := b.Last("RUN")
	if mount, _ := run.Flag("mount"); mount != "type=cache,target=/go/pkg/mod" {
		t.Errorf("RUN --mount = %q", mount)
	}
	if !strings.HasPrefix(run.Args, "go build") || strings.Contains(run.Args, "comment") || run.Line != 6 {
		t.Errorf("continued RUN = line %d %q, want line 6 starting with go build, comment dropped", run.Line, run.Args)
	}
	final := f.Final()
	if final.Name != "" || final.Base != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final stage = %+v", final)
	}
	cp, _ := final.Last("COPY")
	if from, _ := cp.Flag("from"); from != "builder" || cp.Args != "/out/app /app" {
		t.Errorf("COPY = %+v", cp)
	}
	ep, _ := final.Last("ENTRYPOINT")
	if args, ok := ep.Exec(); !ok || !slices.Equal(args, []string{"/app", "serve"}) {
		t.Errorf("ENTRYPOINT exec form = %v %v", args, ok)
	}
	if _, ok := (Instruction{Args: "/app serve"}).Exec(); ok {
		t.Error("shell form reported as exec form")
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name, text, wantErr string
	}{
		{"no FROM", "RUN true\n", "RUN before the first FROM"},
		{"empty file", "# nothing\n", "no FROM"},
		{"FROM without image", "FROM\n", "FROM without an image"},
		{"malformed AS", "FROM a b c d\n", "want `FROM image [AS name]`"},
		{"dangling continuation", "FROM a\nRUN true \\\n", "continuation at the end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.text))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) err = %v, want %q", tt.text, err, tt.wantErr)
			}
		})
	}
}
