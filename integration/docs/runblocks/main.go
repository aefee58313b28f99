// Command runblocks runs the shell blocks of Markdown files that are marked runnable
// and fails when a command's output differs from what the document shows. It is the
// engine of integration/docs/check.sh (make docs-check), which starts the demo first.
//
// A runnable block is a fenced code block preceded by an HTML comment line, invisible
// when the Markdown is rendered:
//
//	<!-- runnable -->               run the block
//	<!-- runnable: SHELL COMMAND --> run SHELL COMMAND first (set-up the reader does
//	                                 not need to see, e.g. failing a demo backend)
//
// In the block, a line starting with "$ " is a command (run with bash -c, stdout and
// stderr together, in the current directory and environment); the lines up to the
// next command are its expected output. In expected output, "..." matches any text
// within a line, and a line that is only "..." matches any number of lines.
//
// Usage: runblocks FILE.md...  (exit 0: all matched; 1: a mismatch or a failed set-up)
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// block is one runnable block.
type block struct {
	file  string
	line  int // the fence's line
	setup string
	cmds  []command
}

type command struct {
	line int
	text string
	want []string
}

var marker = regexp.MustCompile(`^\s*<!--\s*runnable(?::\s*(.*?))?\s*-->\s*$`)

func parse(file string, data string) ([]block, error) {
	lines := strings.Split(data, "\n")
	var out []block
	for i := 0; i < len(lines); i++ {
		m := marker.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		j := i + 1
		for j < len(lines) && strings.TrimSpace(lines[j]) == "" {
			j++
		}
		if j >= len(lines) || !strings.HasPrefix(strings.TrimSpace(lines[j]), "```") {
			return nil, fmt.Errorf("%s:%d: runnable marker not followed by a ``` block", file, i+1)
		}
		indent := lines[j][:len(lines[j])-len(strings.TrimLeft(lines[j], " "))]
		b := block{file: file, line: j + 1, setup: m[1]}
		k := j + 1
		for ; k < len(lines) && strings.TrimSpace(lines[k]) != "```"; k++ {
			l := strings.TrimPrefix(lines[k], indent)
			if strings.HasPrefix(l, "$ ") {
				b.cmds = append(b.cmds, command{line: k + 1, text: strings.TrimPrefix(l, "$ ")})
				continue
			}
			if len(b.cmds) == 0 {
				return nil, fmt.Errorf("%s:%d: output before the first \"$ \" command", file, k+1)
			}
			c := &b.cmds[len(b.cmds)-1]
			c.want = append(c.want, strings.TrimRight(l, " \t"))
		}
		if k >= len(lines) {
			return nil, fmt.Errorf("%s:%d: unterminated block", file, j+1)
		}
		out = append(out, b)
		i = k
	}
	return out, nil
}

// lineMatch matches one line with "..." wildcards.
func lineMatch(want, got string) bool {
	parts := strings.Split(want, "...")
	if len(parts) == 1 {
		return want == got
	}
	if !strings.HasPrefix(got, parts[0]) {
		return false
	}
	got = got[len(parts[0]):]
	for i, p := range parts[1:] {
		if i == len(parts)-2 {
			return strings.HasSuffix(got, p)
		}
		k := strings.Index(got, p)
		if k < 0 {
			return false
		}
		got = got[k+len(p):]
	}
	return true
}

// match matches the expected lines against the output, "..." lines matching any run
// of lines.
func match(want, got []string) bool {
	if len(want) == 0 {
		return len(got) == 0
	}
	if want[0] == "..." {
		for k := 0; k <= len(got); k++ {
			if match(want[1:], got[k:]) {
				return true
			}
		}
		return false
	}
	return len(got) > 0 && lineMatch(want[0], got[0]) && match(want[1:], got[1:])
}

func run(shell string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-c", shell).CombinedOutput()
	return string(out), err
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: runblocks FILE.md...")
		os.Exit(2)
	}
	failed, passed := 0, 0
	for _, file := range os.Args[1:] {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		blocks, err := parse(file, string(data))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for _, b := range blocks {
			if b.setup != "" {
				if out, err := run(b.setup); err != nil {
					fmt.Printf("FAIL %s:%d: set-up %q: %v\n%s", b.file, b.line, b.setup, err, out)
					failed++
					continue
				}
			}
			for _, c := range b.cmds {
				out, _ := run(c.text) // the exit status shows in the output when the doc wants it (echo rc=$?)
				got := strings.Split(strings.TrimRight(out, "\n"), "\n")
				if out == "" {
					got = nil
				}
				for i := range got {
					got[i] = strings.TrimRight(got[i], " \t")
				}
				if match(c.want, got) {
					fmt.Printf("ok   %s:%d: %s\n", b.file, c.line, c.text)
					passed++
					continue
				}
				failed++
				fmt.Printf("FAIL %s:%d: %s\n  the doc shows:\n", b.file, c.line, c.text)
				for _, l := range c.want {
					fmt.Printf("    | %s\n", l)
				}
				fmt.Printf("  the command printed:\n")
				for _, l := range got {
					fmt.Printf("    | %s\n", l)
				}
			}
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
