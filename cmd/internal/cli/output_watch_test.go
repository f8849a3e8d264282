package cli

import (
	"bytes"
	"strings"
	"testing"
)

// A watch's later rows keep the columns of the table printed first (a
// longer cell pushes its own row only), and an update that changes nothing
// printed prints nothing.
func TestWatchRowsAlignAndSkipRepeats(t *testing.T) {
	res, _ := lookupResource("pods")
	var out bytes.Buffer
	p, err := newRecordPrinter(res, printOptions{format: outputFormat{kind: "table"}}, &out)
	if err != nil {
		t.Fatal(err)
	}
	long := testPodRow("a-long-namespace", "a-rather-long-pod-name")
	if err := p.list([]record{long}, false); err != nil {
		t.Fatal(err)
	}
	header := strings.SplitN(out.String(), "\n", 2)[0]
	// column is where a cell other than the first starts.
	column := func(line, cell string) int { return strings.Index(line, " "+cell) + 1 }
	out.Reset()

	short := testPodRow("default", "wpod")
	short.(*podRow).Phase = "Scheduled"
	for range 2 { // the second time, nothing changed
		if err := p.one(short); err != nil {
			t.Fatal(err)
		}
		if err := p.flush(); err != nil {
			t.Fatal(err)
		}
	}
	rows := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(rows) != 1 {
		t.Fatalf("an unchanged update printed again:\n%s", out.String())
	}
	for _, c := range [][2]string{{"NAME", "wpod"}, {"READY", "0/1"}, {"PHASE", "Scheduled"}} {
		if column(header, c[0]) != column(rows[0], c[1]) {
			t.Errorf("%s not under %s:\n%s\n%s", c[1], c[0], header, rows[0])
		}
	}

	// A longer cell pushes the rest of its row, and only its row.
	out.Reset()
	longer := testPodRow("default", "a-pod-name-longer-than-any-before-it")
	short.(*podRow).Phase = "Running"
	for _, r := range []record{longer, short} {
		if err := p.one(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.flush(); err != nil {
		t.Fatal(err)
	}
	rows = strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(rows) != 2 || !strings.Contains(rows[0], "a-pod-name-longer-than-any-before-it  0/1") ||
		column(rows[1], "Running") != column(header, "PHASE") {
		t.Errorf("rows after a longer cell:\n%s\n%s", header, out.String())
	}

	// A pod deleted and created again shows again.
	out.Reset()
	if err := p.deleted(short); err != nil {
		t.Fatal(err)
	}
	if err := p.one(short); err != nil {
		t.Fatal(err)
	}
	if err := p.flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "deleted\ndefault") {
		t.Errorf("a re-created pod after its deletion:\n%s", out.String())
	}
}
