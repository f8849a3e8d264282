package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

type eventsOptions struct {
	follow  bool
	typ     string
	output  string
	dlq     bool
	streams []string
}

func newEventsCmd(g *globals) *cobra.Command {
	o := &eventsOptions{}
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print the stored event history, oldest first (-w to watch for more)",
		Long: `events prints the events stored in the podvisor streams, oldest first, merged across streams.
--type filters by CloudEvent type with a glob, matched against the full type
(io.podvisor.pod.requested.v1) and the short one (pod.requested): --type 'pod.*'.
-o json prints one structured CloudEvent per line. --dlq prints the dead letters instead,
with the reason each was set aside. With nothing to list, the table says so ("No events found.",
"No dead-lettered events found."); -o json prints nothing. -w (or -f, --follow) keeps printing
new events.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.output != "table" && o.output != "json" {
				return usageError("-o %q: want table or json", o.output)
			}
			if _, err := path.Match(o.typ, ""); err != nil {
				return usageError("--type %q: %v", o.typ, err)
			}
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return runEvents(cmd.Context(), b, o, g.stdout, g.stderr)
		},
	}
	cmd.Flags().BoolVarP(&o.follow, "watch", "w", false, "keep printing new events")
	// -f/--follow is the older spelling, kept as an alias.
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "keep printing new events (alias of -w)")
	cmd.Flags().StringVar(&o.typ, "type", "*", "only events whose type matches this glob")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	cmd.Flags().BoolVar(&o.dlq, "dlq", false, "print dead letters (DLQ stream) with their reasons")
	return cmd
}

// storedMsg is one message read from a stream.
type storedMsg struct {
	stream string
	seq    uint64
	time   time.Time
	msg    jetstream.Msg
}

func runEvents(ctx context.Context, b *bus.Bus, o *eventsOptions, stdout, stderr io.Writer) error {
	streams := []string{events.StreamPods, events.StreamImages, events.StreamNetworks, events.StreamMigrations, events.StreamHosts,
		events.StreamVMs, events.StreamGuestClusters}
	if o.dlq {
		streams = []string{bus.StreamDLQ}
	}
	p := newEventPrinter(o, stdout, stderr)
	defer p.flush()

	// History: read every stream up to its last sequence at start, then
	// merge by stored time so the output reads as one timeline.
	var history []storedMsg
	read := map[string]uint64{} // the last sequence read of each stream
	for _, name := range streams {
		s, err := b.JetStream().Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w (has `podvisor up` declared the topology?)", name, err)
		}
		last := s.CachedInfo().State.LastSeq
		c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		for last > 0 {
			// Ask for no more than what is left, so the last batch returns
			// at once instead of waiting out FetchMaxWait.
			batch, err := c.Fetch(int(min(500, max(1, last-read[name]))), jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			n := 0
			done := false
			for m := range batch.Messages() {
				n++
				md, err := m.Metadata()
				if err != nil {
					continue
				}
				history = append(history, storedMsg{name, md.Sequence.Stream, md.Timestamp, m})
				read[name] = md.Sequence.Stream
				if md.Sequence.Stream >= last {
					done = true
				}
			}
			if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
				return fmt.Errorf("read %s: %w", name, err)
			}
			if done || n == 0 {
				break
			}
		}
	}
	slices.SortStableFunc(history, func(a, b storedMsg) int { return cmp.Compare(a.time.UnixNano(), b.time.UnixNano()) })
	for _, m := range history {
		p.print(m)
	}
	if !o.follow {
		p.noneFound()
		return nil
	}
	p.flush()
	var mu sync.Mutex
	for _, name := range streams {
		// A consumer that fetched cannot consume: following is a second
		// ordered consumer, from the message after the last one read.
		s, err := b.JetStream().Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("follow %s: %w", name, err)
		}
		c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: read[name] + 1,
		})
		if err != nil {
			return fmt.Errorf("follow %s: %w", name, err)
		}
		cc, err := c.Consume(func(m jetstream.Msg) {
			md, _ := m.Metadata()
			sm := storedMsg{stream: name, msg: m}
			if md != nil {
				sm.seq, sm.time = md.Sequence.Stream, md.Timestamp
			}
			mu.Lock()
			p.print(sm)
			p.flush()
			mu.Unlock()
		})
		if err != nil {
			return fmt.Errorf("follow %s: %w", name, err)
		}
		defer cc.Stop()
	}
	<-ctx.Done()
	return nil
}

type eventPrinter struct {
	o      *eventsOptions
	tw     *tabwriter.Writer
	out    io.Writer
	stderr io.Writer
	header bool
}

func newEventPrinter(o *eventsOptions, stdout, stderr io.Writer) *eventPrinter {
	return &eventPrinter{o: o, out: stdout, stderr: stderr, tw: tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)}
}

func (p *eventPrinter) flush() { p.tw.Flush() }

// noneFound says, as get does, that the table would be empty (one JSON
// event a line prints no line at all).
func (p *eventPrinter) noneFound() {
	if p.header || p.o.output != "table" {
		return
	}
	what := "events"
	if p.o.dlq {
		what = "dead-lettered events"
	}
	if p.o.typ != "*" {
		fmt.Fprintf(p.out, "No %s of type %s found.\n", what, p.o.typ)
		return
	}
	fmt.Fprintf(p.out, "No %s found.\n", what)
}

// shortType turns io.podvisor.pod.requested.v1 into pod.requested.
func shortType(t string) string {
	s := strings.TrimPrefix(t, "io.podvisor.")
	if i := strings.LastIndex(s, ".v"); i > 0 {
		s = s[:i]
	}
	return s
}

func (p *eventPrinter) matches(t string) bool {
	if p.o.typ == "*" {
		return true
	}
	full, _ := path.Match(p.o.typ, t)
	short, _ := path.Match(p.o.typ, shortType(t))
	return full || short
}

func (p *eventPrinter) print(m storedMsg) {
	if p.o.dlq {
		p.printDeadLetter(m)
		return
	}
	ev, err := bus.DecodeMessage(m.msg)
	if err != nil {
		fmt.Fprintf(p.stderr, "warning: %s #%d on %s: %v\n", m.stream, m.seq, m.msg.Subject(), err)
		return
	}
	if !p.matches(ev.Type()) {
		return
	}
	if p.o.output == "json" {
		line, err := json.Marshal(ev)
		if err != nil {
			fmt.Fprintf(p.stderr, "warning: %s #%d: %v\n", m.stream, m.seq, err)
			return
		}
		fmt.Fprintln(p.out, string(line))
		return
	}
	if !p.header {
		fmt.Fprintln(p.tw, "TIME\tTYPE\tSUBJECT\tSOURCE\tID")
		p.header = true
	}
	fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\n", m.time.Local().Format("15:04:05.000"), shortType(ev.Type()), ev.Subject(), ev.Source(), shortID(ev))
}

func shortID(ev event.Event) string {
	if id := ev.ID(); len(id) > 12 {
		return id[:12]
	}
	return ev.ID()
}

// printDeadLetter shows a DLQ entry: the service that gave up, the reason
// and what the original was.
func (p *eventPrinter) printDeadLetter(m storedMsg) {
	h := m.msg.Headers()
	dl, err := bus.ReadDeadLetter(h)
	if err != nil {
		fmt.Fprintf(p.stderr, "warning: DLQ #%d: %v\n", m.seq, err)
		return
	}
	origType := h.Get(bus.HeaderPrefix + "type")
	if origType == "" {
		// A structured-mode original carries its type in the body.
		var structured struct {
			SpecVersion string `json:"specversion"`
			Type        string `json:"type"`
		}
		if json.Unmarshal(m.msg.Data(), &structured) == nil && structured.SpecVersion != "" {
			origType = structured.Type
		}
	}
	if p.o.typ != "*" && !p.matches(origType) {
		return
	}
	if p.o.output == "json" {
		line, _ := json.Marshal(map[string]any{
			"service": dl.Service, "reason": dl.Reason, "stream": dl.Stream, "subject": dl.Subject,
			"streamSeq": dl.StreamSeq, "deliveries": dl.Deliveries, "time": dl.Time,
			"type": origType, "data": string(m.msg.Data()),
		})
		fmt.Fprintln(p.out, string(line))
		return
	}
	if !p.header {
		fmt.Fprintln(p.tw, "TIME\tSERVICE\tSUBJECT\tTYPE\tREASON")
		p.header = true
	}
	fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\n", dl.Time.Local().Format("15:04:05.000"), dl.Service, dl.Subject, dash(shortType(origType)), dl.Reason)
}
