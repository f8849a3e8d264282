package vspc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// Telnet commands (RFC 854) and the options used.
const (
	cmdSE   = 240
	cmdSB   = 250
	cmdWILL = 251
	cmdWONT = 252
	cmdDO   = 253
	cmdDONT = 254
	cmdIAC  = 255

	optBinary = 0   // RFC 856
	optSGA    = 3   // suppress go-ahead, RFC 858
	optVMware = 232 // VMWARE-TELNET-EXT
)

// The VMware telnet extension's subcommands.
const (
	KnownSuboptions1      = 0
	KnownSuboptions2      = 1
	UnknownSuboptionRcvd1 = 2
	UnknownSuboptionRcvd2 = 3
	VMotionBegin          = 40
	VMotionGoahead        = 41
	VMotionNotNow         = 43
	VMotionPeer           = 44
	VMotionPeerOK         = 45
	VMotionComplete       = 46
	VMotionAbort          = 48
	DoProxy               = 70
	WillProxy             = 71
	WontProxy             = 73
	VMVCUUID              = 80
	GetVMVCUUID           = 81
	VMName                = 82
	GetVMName             = 83
)

// known are the subcommands both sides here send and understand.
var known = []byte{KnownSuboptions1, KnownSuboptions2, UnknownSuboptionRcvd1, UnknownSuboptionRcvd2,
	VMotionBegin, VMotionGoahead, VMotionNotNow, VMotionPeer, VMotionPeerOK, VMotionComplete, VMotionAbort,
	DoProxy, WillProxy, WontProxy, VMVCUUID, GetVMVCUUID, VMName, GetVMName}

// maxSubneg bounds one subnegotiation's payload: the longest the extension
// sends is a service URI or a VM's name.
const maxSubneg = 4 << 10

// event is one thing read from a telnet stream: data, an option command
// (verb WILL/WONT/DO/DONT and its option) or a subnegotiation of the
// VMware extension (its subcommand and parameters).
type event struct {
	data   []byte
	verb   byte
	option byte
	sub    byte
	params []byte
	isSub  bool
}

// reader splits a telnet stream into events.
type reader struct{ r *bufio.Reader }

func newReader(r io.Reader) *reader { return &reader{r: bufio.NewReaderSize(r, 32<<10)} }

// next reads the next event. Data comes in the runs the connection gave,
// with doubled 0xFF bytes made single again; other telnet commands (NOP,
// go-ahead, …) and subnegotiations of other options are skipped.
func (t *reader) next() (event, error) {
	for {
		b, err := t.r.ReadByte()
		if err != nil {
			return event{}, err
		}
		if b != cmdIAC {
			// A run of data up to the next IAC or what is buffered.
			run := []byte{b}
			for t.r.Buffered() > 0 {
				peek, _ := t.r.Peek(1)
				if peek[0] == cmdIAC {
					break
				}
				c, _ := t.r.ReadByte()
				run = append(run, c)
			}
			return event{data: run}, nil
		}
		cmd, err := t.r.ReadByte()
		if err != nil {
			return event{}, err
		}
		switch cmd {
		case cmdIAC:
			return event{data: []byte{cmdIAC}}, nil
		case cmdWILL, cmdWONT, cmdDO, cmdDONT:
			opt, err := t.r.ReadByte()
			if err != nil {
				return event{}, err
			}
			return event{verb: cmd, option: opt}, nil
		case cmdSB:
			payload, err := t.subneg()
			if err != nil {
				return event{}, err
			}
			if len(payload) < 2 || payload[0] != optVMware {
				continue
			}
			return event{isSub: true, sub: payload[1], params: payload[2:]}, nil
		default:
			continue
		}
	}
}

// subneg reads a subnegotiation's payload up to IAC SE.
func (t *reader) subneg() ([]byte, error) {
	var p []byte
	for {
		b, err := t.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if b == cmdIAC {
			c, err := t.r.ReadByte()
			if err != nil {
				return nil, err
			}
			switch c {
			case cmdSE:
				return p, nil
			case cmdIAC:
				// a doubled 0xFF within the parameters
			default:
				return nil, fmt.Errorf("telnet: IAC %d within a subnegotiation", c)
			}
		}
		if len(p) >= maxSubneg {
			return nil, errors.New("telnet: subnegotiation longer than 4 KiB")
		}
		p = append(p, b)
	}
}

// escape doubles every 0xFF of data.
func escape(data []byte) []byte {
	n := 0
	for _, b := range data {
		if b == cmdIAC {
			n++
		}
	}
	if n == 0 {
		return data
	}
	out := make([]byte, 0, len(data)+n)
	for _, b := range data {
		out = append(out, b)
		if b == cmdIAC {
			out = append(out, cmdIAC)
		}
	}
	return out
}

// sub is the bytes of a subnegotiation of the VMware extension.
func sub(code byte, params ...[]byte) []byte {
	out := []byte{cmdIAC, cmdSB, optVMware, code}
	for _, p := range params {
		out = append(out, escape(p)...)
	}
	return append(out, cmdIAC, cmdSE)
}

// option is IAC verb opt.
func option(verb, opt byte) []byte { return []byte{cmdIAC, verb, opt} }

// options remembers the option commands a side sent, so that it answers
// each option once: an answer to its own request is no request, and
// answering it again would loop.
type options map[[2]byte]bool

// answer is the reply to an option command: the options this package uses
// are agreed to, any other refused; nothing when this side already said
// where it stands on the option, or for WONT and DONT.
func (o options) answer(verb, opt byte) []byte {
	agreed := opt == optBinary || opt == optSGA || opt == optVMware
	var yes, no byte
	switch verb {
	case cmdWILL:
		yes, no = cmdDO, cmdDONT
	case cmdDO:
		yes, no = cmdWILL, cmdWONT
	default:
		return nil
	}
	if o[[2]byte{yes, opt}] || o[[2]byte{no, opt}] {
		return nil
	}
	if !agreed {
		yes = no
	}
	o[[2]byte{yes, opt}] = true
	return option(yes, opt)
}

// say is IAC verb opt, remembered.
func (o options) say(verb, opt byte) []byte {
	o[[2]byte{verb, opt}] = true
	return option(verb, opt)
}
