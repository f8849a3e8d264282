package cli

import (
	"io"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// progressBars draws bars for bulk work (apply of many objects, drain,
// bench) on a terminal, and nothing elsewhere: scripts and logs get the
// plain lines only.
type progressBars struct {
	p *mpb.Progress
}

// minBulk is how many objects make an apply bulk enough for bars.
const minBulk = 20

// newProgressBars returns bars drawn on out when out is a terminal, else a
// no-op set.
func newProgressBars(out io.Writer) *progressBars {
	if !isTerminal(out) {
		return &progressBars{}
	}
	return &progressBars{p: mpb.New(mpb.WithOutput(out), mpb.WithWidth(min(60, max(20, terminalWidth(out)/3))))}
}

// bar adds a bar of total steps and returns a func that advances it by n
// (safe from several goroutines).
func (pb *progressBars) bar(name string, total int) func(n int) {
	if pb.p == nil || total <= 0 {
		return func(int) {}
	}
	b := pb.p.AddBar(int64(total),
		mpb.PrependDecorators(decor.Name(name, decor.WC{C: decor.DindentRight | decor.DextraSpace}), decor.CountersNoUnit("%d/%d")),
		mpb.AppendDecorators(decor.Percentage(), decor.Name(" "), decor.Elapsed(decor.ET_STYLE_GO)),
	)
	var mu sync.Mutex
	return func(n int) {
		mu.Lock()
		defer mu.Unlock()
		if n > 0 {
			b.IncrBy(n)
		}
	}
}

// done completes every bar (aborting those that did not reach their total)
// and waits until they are drawn for the last time.
func (pb *progressBars) done() {
	if pb.p == nil {
		return
	}
	pb.p.Shutdown()
}
