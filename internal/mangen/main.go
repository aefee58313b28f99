// Command mangen renders the man pages kubal(8) and kubalctl(8) from one source each:
// the options from the binaries' own flag sets (their -h output, so a new flag cannot
// be missing from the page) and the pybal.conf keys from docs/config.md's tables. The
// Debian package build (packaging/deb/build.sh) runs it:
//
//	go run ./internal/mangen -kubal bin/kubal -kubalctl bin/kubalctl -config docs/config.md -out DIR
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "mangen: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mangen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubal := fs.String("kubal", "bin/kubal", "kubal binary")
	kubalctl := fs.String("kubalctl", "bin/kubalctl", "kubalctl binary")
	confDoc := fs.String("config", "docs/config.md", "the config reference")
	out := fs.String("out", ".", "directory for kubal.8 and kubalctl.8")
	date := fs.String("date", "", "date in the page footer (YYYY-MM-DD; default: $SOURCE_DATE_EPOCH, else today)")
	version := fs.String("version", "", "version in the page footer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *date == "" {
		*date = sourceDate(os.Getenv("SOURCE_DATE_EPOCH"), time.Now())
	}
	kHelp, err := helpText(*kubal)
	if err != nil {
		return err
	}
	cHelp, err := helpText(*kubalctl)
	if err != nil {
		return err
	}
	md, err := os.ReadFile(*confDoc)
	if err != nil {
		return err
	}
	keys := parseConfigTables(string(md))
	if len(keys) == 0 {
		return fmt.Errorf("%s: no key tables found", *confDoc)
	}
	meta := pageMeta{Date: *date, Version: *version}
	pages := map[string]string{
		"kubal.8":    renderKubal(meta, parseFlags(kHelp), keys),
		"kubalctl.8": renderKubalctl(meta, parseFlags(cHelp), parseCommands(cHelp), cHelp),
	}
	for name, text := range pages {
		if err := os.WriteFile(filepath.Join(*out, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func sourceDate(epoch string, now time.Time) string {
	var sec int64
	if _, err := fmt.Sscan(epoch, &sec); err == nil && sec > 0 {
		return time.Unix(sec, 0).UTC().Format("2006-01-02")
	}
	return now.UTC().Format("2006-01-02")
}

// helpText runs "bin -h": the flag package prints the usage to stderr and exits 0.
func helpText(bin string) (string, error) {
	var buf bytes.Buffer
	cmd := exec.Command(bin, "-h")
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return "", fmt.Errorf("%s -h: %w", bin, err)
		}
	}
	if !strings.Contains(buf.String(), "\n  -") {
		return "", fmt.Errorf("%s -h printed no flags:\n%s", bin, buf.String())
	}
	return buf.String(), nil
}

// option is one flag as flag.PrintDefaults shows it.
type option struct {
	Names []string // "-n", "--dryrun": aliases ("same as -n") are merged into one
	Arg   string   // "string", "duration", "" for booleans
	Usage string
}

var flagLine = regexp.MustCompile(`^  -(\S+)(?: (\S+))?(?:\t(.*))?$`)

// parseFlags reads flag.PrintDefaults output: "  -name type" then "    \tusage" lines
// (a one-letter boolean keeps its usage on the same line after a tab).
func parseFlags(help string) []option {
	var opts []option
	for _, l := range strings.Split(help, "\n") {
		if m := flagLine.FindStringSubmatch(l); m != nil {
			opts = append(opts, option{Names: []string{dashes(m[1])}, Arg: m[2], Usage: strings.TrimSpace(m[3])})
			continue
		}
		if strings.HasPrefix(l, "    \t") && len(opts) > 0 {
			o := &opts[len(opts)-1]
			o.Usage = strings.TrimSpace(o.Usage + " " + strings.TrimSpace(l))
		}
	}
	// Merge "same as -x" aliases into -x.
	var merged []option
	alias := map[string]string{}
	for _, o := range opts {
		if t, ok := strings.CutPrefix(o.Usage, "same as "); ok {
			alias[t] = o.Names[0]
		}
	}
	for _, o := range opts {
		if strings.HasPrefix(o.Usage, "same as ") {
			continue
		}
		if a, ok := alias[o.Names[0]]; ok {
			o.Names = append(o.Names, a)
		}
		merged = append(merged, o)
	}
	return merged
}

// dashes: Go flags take one or two dashes; the pages show the GNU style.
func dashes(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

var wideGap = regexp.MustCompile(`\s{2,}`)

// command is one line of kubalctl's "commands:" block.
type command struct{ Synopsis, Usage string }

func parseCommands(help string) []command {
	var cmds []command
	in := false
	for _, l := range strings.Split(help, "\n") {
		switch {
		case strings.TrimSpace(l) == "commands:":
			in = true
		case in && strings.TrimSpace(l) == "":
			return cmds
		case in:
			// The description follows the last run of 2+ spaces ("pool   POOL HOST ...").
			l = strings.TrimSpace(l)
			c := command{Synopsis: l}
			if gaps := wideGap.FindAllStringIndex(l, -1); len(gaps) > 0 {
				g := gaps[len(gaps)-1]
				c.Synopsis, c.Usage = l[:g[0]], l[g[1]:]
			}
			c.Synopsis = strings.Join(strings.Fields(c.Synopsis), " ")
			cmds = append(cmds, c)
		}
	}
	return cmds
}

// key is one row of a key table of docs/config.md.
type key struct {
	Section string   // the heading the table is under
	Name    string   // "bgp-local-asn", "proxyfetch.url"
	Facts   []string // "type: int", "default: no", ... (the middle columns)
	Meaning string
}

// parseConfigTables reads every markdown table whose first header cell is key, option
// or monitor; a monitor table's rows are named monitor.option (lower case), as in
// pybal.conf, and an empty monitor cell repeats the row above.
func parseConfigTables(md string) []key {
	var keys []key
	var heading string
	var header []string
	monitor := ""
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(l, "#") {
			heading = plain(strings.TrimLeft(l, "# "))
			header = nil
			continue
		}
		if !strings.HasPrefix(l, "|") {
			header = nil
			continue
		}
		cells := splitRow(l)
		if header == nil {
			header = cells
			monitor = ""
			continue
		}
		if strings.HasPrefix(cells[0], "---") || len(cells) != len(header) {
			continue
		}
		first := strings.ToLower(header[0])
		if first != "key" && first != "option" && first != "monitor" {
			continue
		}
		k := key{Section: heading, Name: plain(cells[0]), Meaning: plain(cells[len(cells)-1])}
		mid := cells[1 : len(cells)-1]
		hmid := header[1 : len(header)-1]
		if first == "monitor" {
			if cells[0] != "" {
				monitor = strings.ToLower(plain(cells[0]))
			}
			k.Name = monitor + "." + plain(cells[1])
			mid, hmid = mid[1:], hmid[1:]
		}
		for i, c := range mid {
			if c = plain(c); c != "" {
				k.Facts = append(k.Facts, hmid[i]+": "+c)
			}
		}
		keys = append(keys, k)
	}
	return keys
}

// splitRow splits a markdown table row; "\|" inside a cell is a literal bar.
func splitRow(l string) []string {
	l = strings.TrimSpace(l)
	l = strings.TrimPrefix(strings.TrimSuffix(l, "|"), "|")
	l = strings.ReplaceAll(l, `\|`, "\x00")
	var cells []string
	for _, c := range strings.Split(l, "|") {
		cells = append(cells, strings.ReplaceAll(strings.TrimSpace(c), "\x00", "|"))
	}
	return cells
}

var mdLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// plain drops markdown emphasis, code marks and link targets.
func plain(s string) string {
	s = mdLink.ReplaceAllString(s, "$1")
	s = strings.NewReplacer("**", "", "`", "").Replace(s)
	return strings.TrimSpace(s)
}

// esc makes text safe in a roff line: backslashes, dashes and a leading dot or quote.
func esc(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

type pageMeta struct{ Date, Version string }

func header(b *strings.Builder, name string, m pageMeta) {
	fmt.Fprintf(b, ".\\\" Generated by internal/mangen from the flag sets and docs/config.md; do not edit.\n")
	fmt.Fprintf(b, ".TH %s 8 \"%s\" \"kubal %s\" \"System Administration\"\n", strings.ToUpper(name), m.Date, m.Version)
}

func renderOptions(b *strings.Builder, opts []option) {
	b.WriteString(".SH OPTIONS\n")
	for _, o := range opts {
		b.WriteString(".TP\n")
		var names []string
		for _, n := range o.Names {
			s := `\fB` + esc(n) + `\fR`
			if o.Arg != "" {
				s += ` \fI` + esc(strings.ToUpper(o.Arg)) + `\fR`
			}
			names = append(names, s)
		}
		b.WriteString(strings.Join(names, ", ") + "\n")
		b.WriteString(esc(capitalise(o.Usage)) + ".\n")
	}
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func renderKubal(m pageMeta, opts []option, keys []key) string {
	var b strings.Builder
	header(&b, "kubal", m)
	b.WriteString(`.SH NAME
kubal \- PyBal\-compatible LVS load balancer daemon
.SH SYNOPSIS
.B kubal
[\fB\-c\fR \fIFILE\fR] [\fB\-n\fR] [\fB\-d\fR] [\fB\-\-check\-config\fR] [\fB\-\-log\-format\fR \fItext\fR|\fIjson\fR]
.SH DESCRIPTION
.B kubal
reads PyBal's
.I pybal.conf
unchanged, learns the real servers of each service (PyBal server lists, conftool keys in
etcd, or Kubernetes Nodes), health\-checks them with PyBal's monitors, programs IPVS
over netlink and announces the service IPs to the routers over BGP.
SREs pool and depool servers through the admin API and
.BR kubalctl (8).
It runs in the foreground as a systemd service of Type=notify: it reports ready once
the config is loaded and every source has delivered its first server list, and pets the
systemd watchdog while its main loop turns.
`)
	renderOptions(&b, opts)
	b.WriteString(`.SH SIGNALS
.TP
.B SIGHUP
Reload the config (\fBsystemctl reload kubal\fR). The new file is validated first; a bad
file keeps the running config and is reported in the log, \fI/alerts\fR and the metric
kubal_config_reload_success.
.TP
.BR SIGTERM ", " SIGINT
Stop: withdraw the BGP routes (the routers fail over to the backup LVS host) and leave
IPVS as it is.
.TP
.B SIGUSR2
Stop for a planned restart: with \fBbgp\-graceful\-restart = yes\fR the sessions close
without a withdraw and the routers keep forwarding to this host until the restarted kubal
re\-announces.
.SH EXIT STATUS
0 on a clean stop or a valid config (\fB\-\-check\-config\fR); 1 for a bad config (every
error is printed with its file:line) or a runtime failure; 2 for bad arguments.
.SH CONFIGURATION
Every key of \fIpybal.conf\fR that kubal reads, from the config reference
(\fI/usr/share/doc/kubal/config.md.gz\fR). An unknown key is a warning naming its file:line.
`)
	section := ""
	for _, k := range keys {
		if k.Section != section {
			section = k.Section
			fmt.Fprintf(&b, ".SS %s\n", esc(section))
		}
		fmt.Fprintf(&b, ".TP\n.B %s\n", esc(k.Name))
		text := strings.Join(k.Facts, "; ")
		if k.Meaning != "" {
			if text != "" {
				text += ". "
			}
			text += k.Meaning
		}
		b.WriteString(esc(text) + "\n")
	}
	b.WriteString(`.SH FILES
.TP
.I /etc/pybal/pybal.conf
The config (\fB\-c\fR).
.TP
.I /var/lib/kubal/state.json
Admin overrides of services without conftool (\fBstate\-file\fR).
.TP
.I /etc/kubal/
Admin tokens, kubeconfig, TLS material; readable by the kubal group.
.TP
.I /usr/share/kubal/
Example pybal.conf, Prometheus alert rules, Grafana dashboard.
.SH SEE ALSO
.BR kubalctl (8),
.BR ipvsadm (8),
.BR systemctl (1)
`)
	return b.String()
}

func renderKubalctl(m pageMeta, opts []option, cmds []command, help string) string {
	var b strings.Builder
	header(&b, "kubalctl", m)
	b.WriteString(`.SH NAME
kubalctl \- pool, depool and inspect the servers of a running kubal
.SH SYNOPSIS
.B kubalctl
[\fIOPTIONS\fR] \fICOMMAND\fR [\fIARGS\fR]
.SH DESCRIPTION
.B kubalctl
talks to the admin API of
.BR kubal (8).
Reads are open; pool, depool and weight need a token (\fB\-\-token\-file\fR or
\fBKUBAL_TOKEN\fR) or a client certificate, and are recorded in the audit log with the
token's name.
.SH COMMANDS
`)
	for _, c := range cmds {
		fmt.Fprintf(&b, ".TP\n.B %s\n%s.\n", esc(c.Synopsis), esc(capitalise(c.Usage)))
	}
	renderOptions(&b, opts)
	for _, l := range strings.Split(help, "\n") {
		if v, ok := strings.CutPrefix(l, "environment: "); ok {
			fmt.Fprintf(&b, ".SH ENVIRONMENT\n%s.\n", esc(v))
		}
		if v, ok := strings.CutPrefix(l, "exit codes: "); ok {
			fmt.Fprintf(&b, ".SH EXIT STATUS\n%s.\n", esc(v))
		}
	}
	b.WriteString(`.SH SEE ALSO
.BR kubal (8)
`)
	return b.String()
}
