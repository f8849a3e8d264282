// Package dockerfile reads a Dockerfile into its build stages and
// instructions, enough to check what an image is made of without a Docker
// engine: which base each stage starts from, which user and entrypoint the
// final image has, what is copied from where.
//
// It understands comments, parser directives (# syntax=…), line continuations,
// instruction flags (--from=, --platform=, --mount=) and the JSON (exec) form
// of arguments; it does not expand ARG variables.
package dockerfile

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Instruction is one instruction, continuation lines joined.
type Instruction struct {
	Line    int      // where it starts, 1-based
	Command string   // upper case: FROM, RUN, COPY, …
	Flags   []string // leading --flags, e.g. "--from=builder"
	Args    string   // the rest, whitespace-trimmed
}

// Flag returns the value of --name=value, if the instruction has it.
func (i Instruction) Flag(name string) (string, bool) {
	for _, f := range i.Flags {
		if v, ok := strings.CutPrefix(f, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// Exec returns the arguments of the JSON (exec) form, ["a", "b"]; ok is false
// for the shell form.
func (i Instruction) Exec() (args []string, ok bool) {
	if !strings.HasPrefix(i.Args, "[") {
		return nil, false
	}
	if err := json.Unmarshal([]byte(i.Args), &args); err != nil {
		return nil, false
	}
	return args, true
}

// Stage is a FROM and the instructions up to the next FROM.
type Stage struct {
	Name         string // the AS name, "" when unnamed
	Base         string // image or earlier stage it starts from
	Platform     string // --platform, if given
	Line         int
	Instructions []Instruction
}

// All returns the stage's instructions of one command, in order.
func (s Stage) All(command string) []Instruction {
	var out []Instruction
	for _, in := range s.Instructions {
		if in.Command == command {
			out = append(out, in)
		}
	}
	return out
}

// Last returns the stage's last instruction of a command: the one that wins
// for USER, ENTRYPOINT, CMD, WORKDIR.
func (s Stage) Last(command string) (Instruction, bool) {
	all := s.All(command)
	if len(all) == 0 {
		return Instruction{}, false
	}
	return all[len(all)-1], true
}

// File is a parsed Dockerfile.
type File struct {
	// Directives are the parser directives at the top (syntax, escape, check).
	Directives map[string]string
	// Args are the ARG instructions before the first FROM.
	Args   []Instruction
	Stages []Stage
}

// Stage finds a stage by its AS name.
func (f *File) Stage(name string) (Stage, bool) {
	for _, s := range f.Stages {
		if strings.EqualFold(s.Name, name) {
			return s, true
		}
	}
	return Stage{}, false
}

// Final is the last stage: what `docker build` produces without --target.
func (f *File) Final() Stage { return f.Stages[len(f.Stages)-1] }

// Parse reads a Dockerfile. It fails on an instruction before the first FROM
// (other than ARG), a FROM without an image, and a dangling continuation.
func Parse(r io.Reader) (*File, error) {
	f := &File{Directives: map[string]string{}}
	sc := bufio.NewScanner(r)
	var (
		lineNo     int
		pending    strings.Builder
		start      int
		directives = true
	)
	flush := func() error {
		text := strings.TrimSpace(pending.String())
		pending.Reset()
		if text == "" {
			return nil
		}
		return f.add(start, text)
	}
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			if directives && pending.Len() == 0 {
				if k, v, ok := directive(trimmed); ok {
					f.Directives[k] = v
					continue
				}
			}
			directives = false
			continue // comments end nothing, even inside a continuation
		}
		directives = false
		if trimmed == "" && pending.Len() == 0 {
			continue
		}
		if pending.Len() == 0 {
			start = lineNo
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			pending.WriteString(body)
			pending.WriteString(" ")
			continue
		}
		pending.WriteString(line)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if pending.Len() > 0 {
		return nil, fmt.Errorf("line %d: continuation at the end of the file", start)
	}
	if len(f.Stages) == 0 {
		return nil, fmt.Errorf("no FROM: not a Dockerfile")
	}
	return f, nil
}

func directive(comment string) (key, value string, ok bool) {
	body := strings.TrimSpace(strings.TrimPrefix(comment, "#"))
	k, v, found := strings.Cut(body, "=")
	if !found || strings.ContainsAny(strings.TrimSpace(k), " \t") {
		return "", "", false
	}
	return strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v), true
}

func (f *File) add(line int, text string) error {
	cmd, rest, _ := strings.Cut(text, " ")
	in := Instruction{Line: line, Command: strings.ToUpper(cmd)}
	rest = strings.TrimSpace(rest)
	for strings.HasPrefix(rest, "--") {
		flag, tail, _ := strings.Cut(rest, " ")
		in.Flags = append(in.Flags, flag)
		rest = strings.TrimSpace(tail)
	}
	in.Args = rest

	if in.Command == "FROM" {
		fields := strings.Fields(in.Args)
		if len(fields) == 0 {
			return fmt.Errorf("line %d: FROM without an image", line)
		}
		st := Stage{Base: fields[0], Line: line}
		if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
			st.Name = fields[2]
		} else if len(fields) != 1 {
			return fmt.Errorf("line %d: FROM %s: want `FROM image [AS name]`", line, in.Args)
		}
		st.Platform, _ = in.Flag("platform")
		f.Stages = append(f.Stages, st)
		return nil
	}
	if len(f.Stages) == 0 {
		if in.Command == "ARG" {
			f.Args = append(f.Args, in)
			return nil
		}
		return fmt.Errorf("line %d: %s before the first FROM", line, in.Command)
	}
	s := &f.Stages[len(f.Stages)-1]
	s.Instructions = append(s.Instructions, in)
	return nil
}
