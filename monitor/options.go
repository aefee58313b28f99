package monitor

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kubal/kubal/config"
)

// parsers read one monitor's options for one target; a zero Target is used by
// Validate. Problems go to v, each naming file:line and key.
var parsers = map[string]func(v *validator, t Target) spec{
	"ProxyFetch":     parseProxyFetch,
	"IdleConnection": parseIdleConnection,
	"RunCommand":     parseRunCommand,
	"DNSQuery":       parseDNSQuery,
	"UDP":            parseUDP,
	"TCP":            parseTCP,
}

// knownOptions are the `<monitor>.<option>` keys each monitor reads.
var knownOptions = map[string][]string{
	"ProxyFetch":     {"url", "interval", "timeout", "http_status", "check_all", "max_failures", "port", "tls-verify", "ca", "expect-status", "rise", "fall", "path"},
	"IdleConnection": {"timeout-clean-reconnect", "max-delay", "keepalive", "keepalive-idle", "keepalive-interval", "keepalive-retries", "port", "rise", "fall", "path"},
	"RunCommand":     {"command", "arguments", "interval", "timeout", "log-output", "rise", "fall"},
	"DNSQuery":       {"hostnames", "interval", "timeout", "fail-on-nxdomain", "port", "rise", "fall"},
	"UDP":            {"interval", "icmp-timeout", "port", "rise", "fall"},
	"TCP":            {"interval", "timeout", "port", "rise", "fall", "path"},
}

// Options returns the option names (without the `<monitor>.` prefix) that monitor
// name reads, for documentation and unknown-key warnings.
func Options(name string) []string { return append([]string(nil), knownOptions[name]...) }

// Validate type-checks the options of every monitor the service lists (and rejects
// unknown monitor names), each finding naming file:line and key.
func Validate(svc *config.Service) config.Diagnostics {
	var ds config.Diagnostics
	for _, name := range svc.Monitors {
		parse, ok := parsers[name]
		if !ok {
			ds = append(ds, config.Diagnostic{Pos: monitorsPos(svc), Key: "monitors",
				Msg: fmt.Sprintf("unknown monitor %q (known, case-sensitive: %s)", name, strings.Join(Names(), ", "))})
			continue
		}
		v := newValidator(svc, name)
		parse(v, Target{})
		ds = append(ds, v.ds...)
	}
	return ds
}

// Warnings lists `<monitor>.<option>` keys that no monitor reads (typos), and
// options of monitors the service does not run, as warnings naming file:line.
func Warnings(svc *config.Service) config.Diagnostics {
	var ds config.Diagnostics
	active := map[string]bool{}
	for _, n := range svc.Monitors {
		active[n] = true
	}
	for _, name := range Names() {
		mo := svc.Monitor(name)
		known := map[string]bool{}
		for _, o := range knownOptions[name] {
			known[o] = true
		}
		keys := mo.Keys()
		opts := make([]string, 0, len(keys))
		for o := range keys {
			opts = append(opts, o)
		}
		sort.Strings(opts)
		for _, o := range opts {
			switch {
			case !known[o]:
				ds = append(ds, config.Diagnostic{Pos: mo.Pos(o), Key: mo.Key(o),
					Msg: fmt.Sprintf("unknown %s option (known: %s)", name, strings.Join(knownOptions[name], ", "))})
			case !active[name]:
				ds = append(ds, config.Diagnostic{Pos: mo.Pos(o), Key: mo.Key(o),
					Msg: fmt.Sprintf("ignored: %s is not in this service's monitors", name)})
			}
		}
	}
	return ds
}

func monitorsPos(svc *config.Service) config.Pos {
	if v, ok := svc.Options["monitors"]; ok {
		return v.Pos
	}
	return svc.Pos
}

// validator reads typed monitor options and collects diagnostics.
type validator struct {
	svc       *config.Service
	name      string
	mo        config.MonitorOptions
	ds        config.Diagnostics
	forwarded bool // the forwarded probe of monitor name (see forwarded.go)
}

func newValidator(svc *config.Service, name string) *validator {
	return &validator{svc: svc, name: name, mo: svc.Monitor(name)}
}

func (v *validator) errf(opt, format string, args ...any) {
	pos := v.mo.Pos(opt)
	if !v.mo.Has(opt) {
		pos = monitorsPos(v.svc)
	}
	v.ds = append(v.ds, config.Diagnostic{Pos: pos, Key: v.mo.Key(opt), Msg: fmt.Sprintf(format, args...)})
}

// fromErr records an error of a config getter, which already names pos and key.
func (v *validator) fromErr(opt string, err error) {
	prefix := fmt.Sprintf("%s: %s: ", v.mo.Pos(opt), v.mo.Key(opt))
	v.errf(opt, "%s", strings.TrimPrefix(err.Error(), prefix))
}

func (v *validator) int(opt string, def, lo, hi int) int {
	n, err := v.mo.Int(opt, def)
	if err != nil {
		v.fromErr(opt, err)
		return def
	}
	if n < lo || n > hi {
		v.errf(opt, "%d out of range [%d, %d]", n, lo, hi)
		return def
	}
	return n
}

func (v *validator) bool(opt string, def bool) bool {
	b, err := v.mo.Bool(opt, def)
	if err != nil {
		v.fromErr(opt, err)
	}
	return b
}

// seconds reads a number of seconds (PyBal getint; fractions allowed); zeroOK
// allows 0 (RunCommand's "no timeout").
func (v *validator) seconds(opt string, def time.Duration, zeroOK bool) time.Duration {
	d, err := v.mo.Seconds(opt, def)
	if err != nil {
		v.fromErr(opt, err)
		return def
	}
	if d <= 0 && !(zeroOK && d == 0) {
		v.errf(opt, "must be positive")
		return def
	}
	return d
}

func (v *validator) strings(opt string, required bool) []string {
	if !v.mo.Has(opt) {
		if required {
			v.errf(opt, "required by monitor %s", v.name)
		}
		return nil
	}
	ss, err := v.mo.Strings(opt, nil)
	if err != nil {
		v.fromErr(opt, err)
		return nil
	}
	if len(ss) == 0 && required {
		v.errf(opt, "must not be empty")
	}
	return ss
}

// port reads `<monitor>.port` (kubal): probe this port instead of the service port.
func (v *validator) port(service uint16) uint16 {
	if !v.mo.Has("port") {
		return service
	}
	return uint16(v.int("port", int(service), 1, 65535))
}

// common holds the options every monitor has.
type common struct {
	name       string
	rise, fall int
	addr       netip.Addr
	port       uint16
	raw        string   // sorted raw options, for the probe key
	fwd        *forward // the forwarded probe: connect to the VIP, marked
}

func (v *validator) common(t Target) common {
	v.path(v.forwarded)
	c := common{
		name: v.name,
		rise: v.int("rise", 1, 1, math.MaxInt32),
		fall: v.int("fall", 1, 1, math.MaxInt32),
		addr: t.Addr,
		raw:  rawOptions(v.mo),
	}
	if v.forwarded {
		c.fwd = &forward{vip: v.svc.IP, server: t.Addr}
		if t.Addr.IsValid() {
			c.fwd.mark = probeMark(v.svc, t.Addr)
		}
	}
	return c
}

func rawOptions(mo config.MonitorOptions) string {
	keys := mo.Keys()
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "%s=%q;", k, strings.TrimSpace(keys[k]))
	}
	return b.String()
}

func (c common) hyst() (int, int) { return c.rise, c.fall }

// key is the probe identity: monitor, its options, and where it probes. extra adds
// target facts the probe uses beyond address and port (RunCommand's host).
func (c common) key(extra ...string) string {
	k := c.name + "|" + c.raw + "|" + netip.AddrPortFrom(c.addr, c.port).String() + "|" + strings.Join(extra, "|")
	if c.fwd != nil {
		k += fmt.Sprintf("|forwarded %s mark %d", c.fwd.vip, c.fwd.mark)
	}
	return k
}

// target is where the probe connects: the server, or the VIP for a forwarded probe.
func (c common) target() string {
	if c.fwd != nil {
		return netip.AddrPortFrom(c.fwd.vip, c.port).String()
	}
	return netip.AddrPortFrom(c.addr, c.port).String()
}

func (c common) forwarded() *forward { return c.fwd }

// dialer readies d for this probe: as it is, or marked and bound for a forwarded one.
func (c common) dialer(d net.Dialer) (net.Dialer, error) { return forwardDialer(d, c.fwd, c.addr) }

// secondsText formats a duration as PyBal prints its int seconds ("5").
func secondsText(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
}
