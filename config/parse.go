package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Load reads and parses the file at path. Unlike PyBal, which silently runs with no
// services when the file is missing, a missing or unreadable file is an error naming
// the path. See Parse for the results and opts.
func Load(path string, opts ...Option) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Diagnostics{{Pos: Pos{File: path}, Msg: fmt.Sprintf("cannot read config: %v", err)}}
	}
	return Parse(path, data, opts...)
}

// Option adds checks that live outside this package (which cannot import the
// packages that know them, e.g. monitor) to the one validation pass of Load/Parse.
type Option func(*options)

type options struct {
	serviceChecks []func(*Service) Diagnostics
	configChecks  []func(*Config) Diagnostics
}

// WithServiceCheck runs check on every service (after the section is read, also when
// it has errors) and merges its findings with the parser's, in line order, so that
// one run reports every error at once. Findings whose Pos.File is empty are reported
// against the section header. Example: config.Load(path, config.WithServiceCheck(monitor.Validate)).
func WithServiceCheck(check func(*Service) Diagnostics) Option {
	return func(o *options) { o.serviceChecks = append(o.serviceChecks, check) }
}

// WithConfigCheck runs check once on the whole parsed config (e.g. reading the admin
// token file) and merges its findings like WithServiceCheck's.
func WithConfigCheck(check func(*Config) Diagnostics) Option {
	return func(o *options) { o.configChecks = append(o.configChecks, check) }
}

// Parse parses and validates pybal.conf text; file is the name used in diagnostics.
//
// When err is nil the Config is valid. Otherwise err is a Diagnostics holding every
// error found, in line order, each with file:line and key; the returned Config is then
// only partly filled and must not be run, but its Warnings are complete (unknown keys
// often explain errors, e.g. a misspelled required key), so callers should print them.
func Parse(file string, data []byte, with ...Option) (*Config, error) {
	var checks options
	for _, opt := range with {
		opt(&checks)
	}
	p := &parser{}
	ini := readINI(file, data, &p.errs, &p.warns)
	cfg := &Config{Path: file, Global: defaultGlobal()}

	// Interpolate every section first: a key used as %(name)s anywhere is a helper
	// variable, not an unknown key.
	opts := make([]Options, len(ini.sections))
	inherited := make([]map[string]bool, len(ini.sections))
	for i, s := range ini.sections {
		opts[i], inherited[i] = ini.options(s, &p.errs)
	}
	p.referenced = ini.referenced
	if ini.defaults != nil {
		p.checkDefaultKeys(ini.defaults)
	}
	var globalPos Pos
	hasGlobal := false
	for i, s := range ini.sections {
		if s.name != "global" {
			continue
		}
		// Without a [global] section PyBal's config.items('global') raises and BGP and
		// instrumentation stay off, even if [DEFAULT] sets them.
		p.global(&cfg.Global, s, opts[i], inherited[i])
		globalPos, hasGlobal = s.pos, true
	}
	for i, s := range ini.sections {
		switch s.name {
		case "global":
		case K8sServicesSection:
			cfg.K8sServices = p.k8sTemplate(s, opts[i], inherited[i])
		default:
			cfg.Services = append(cfg.Services, p.service(s, opts[i], inherited[i]))
		}
	}
	p.crossCheck(cfg, globalPos, hasGlobal)
	for _, svc := range cfg.Services {
		for _, check := range checks.serviceChecks {
			p.external(svc.Pos, check(svc))
		}
	}
	if t := cfg.K8sServices; t != nil && t.Defaults != nil {
		// The template's monitor options are checked like a section's: a declared
		// service inherits them.
		for _, check := range checks.serviceChecks {
			p.external(t.Pos, check(t.Defaults))
		}
	}
	for _, check := range checks.configChecks {
		p.external(Pos{File: file}, check(cfg))
	}

	cfg.Warnings = finish(p.warns)
	if errs := finish(p.errs); len(errs) > 0 {
		return cfg, errs
	}
	return cfg, nil
}

func defaultGlobal() Global {
	return Global{
		BGPLocalIPs:         []string{""},
		BGPLocalPort:        179,
		InstrumentationPort: 9090,
		InstrumentationIPs:  []string{"127.0.0.1", "::1"},
		ConftoolPrefix:      "/conftool/v1/pools",
		AdminPort:           9091,
		AdminIPs:            []string{"127.0.0.1", "::1"},
		StateFile:           "/var/lib/kubal/state.json",
		BGPHoldTime:         180 * time.Second,
		BGPBFDMinRx:         300 * time.Millisecond,
		BGPBFDMinTx:         300 * time.Millisecond,
		BGPBFDMultiplier:    3,
		Options:             Options{},
	}
}

// finish drops exact duplicates (a bad [DEFAULT] value is found once per section) and
// orders the findings by line, keeping discovery order within a line.
func finish(ds Diagnostics) Diagnostics {
	if len(ds) == 0 {
		return nil
	}
	seen := map[Diagnostic]bool{}
	out := make(Diagnostics, 0, len(ds))
	for _, d := range ds {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Pos.File != out[j].Pos.File {
			return out[i].Pos.File < out[j].Pos.File
		}
		return out[i].Pos.Line < out[j].Pos.Line
	})
	return out
}

type parser struct {
	errs, warns Diagnostics
	referenced  map[string]bool // keys used as %(name)s
	// explicit holds, per service, the keys set in its own section (not inherited
	// from [DEFAULT]), for no-effect warnings that need the [global] settings.
	explicit map[*Service]map[string]bool
	// globalExplicit: the same for [global].
	globalExplicit map[string]bool
	// activeActive is the default of a service's active-active ([global]'s).
	activeActive bool
	// declared: the services parsed are Kubernetes-declared ([k8s-services] defaults
	// and DeclaredService), whose pool-unchecked default is no.
	declared bool
}

func (p *parser) errorf(pos Pos, key, format string, args ...any) {
	p.errs = append(p.errs, Diagnostic{Pos: pos, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) warnf(pos Pos, key, format string, args ...any) {
	p.warns = append(p.warns, Diagnostic{Pos: pos, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// external records the errors of a check passed in as an Option; one without a
// position is placed at def.
func (p *parser) external(def Pos, ds Diagnostics) {
	for _, d := range ds {
		if d.Pos.File == "" {
			d.Pos = def
		}
		p.errs = append(p.errs, d)
	}
}

// add records an error returned by an Options getter.
func (p *parser) add(err error) {
	if err == nil {
		return
	}
	var d diagError
	if errors.As(err, &d) {
		p.errs = append(p.errs, Diagnostic(d))
		return
	}
	p.errs = append(p.errs, Diagnostic{Msg: err.Error()})
}

func (p *parser) bool(o Options, key string, def bool) bool {
	v, err := o.Bool(key, def)
	if err != nil {
		err = Diagnostic{Pos: o[key].Pos, Key: key, Msg: fmt.Sprintf("not a boolean: %q (want yes/no, true/false, on/off, 1/0)%s",
			strings.TrimSpace(o[key].Raw), hashHint(o[key].Raw))}.asError()
	}
	p.add(err)
	return v
}

// integer reads key as a base-10 integer in [lo, hi], or def when missing.
func (p *parser) integer(o Options, key string, def, lo, hi int64) int64 {
	v, ok := o[key]
	if !ok {
		return def
	}
	s := strings.TrimSpace(v.Raw)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		p.errorf(v.Pos, key, "not an integer: %q%s", v.Raw, hashHint(v.Raw))
		return def
	}
	if n < lo || n > hi {
		p.errorf(v.Pos, key, "%d is out of range [%d, %d]", n, lo, hi)
		return def
	}
	return n
}

func (p *parser) port(o Options, key string, def int) int {
	return int(p.integer(o, key, int64(def), 1, 65535))
}

// enum reads key as one of the allowed values (case-sensitive), or def when missing.
func (p *parser) enum(o Options, key, def string, allowed []string) string {
	v, ok := o[key]
	if !ok {
		return def
	}
	s := strings.TrimSpace(v.Raw)
	if contains(allowed, s) {
		return s
	}
	hint := hashHint(v.Raw)
	if hint == "" && contains(allowed, strings.ToLower(s)) {
		hint = fmt.Sprintf(" (values are case-sensitive: write %q)", strings.ToLower(s))
	}
	p.errorf(v.Pos, key, "%q is not one of %s%s", s, strings.Join(allowed, ", "), hint)
	return def
}

// hashHint explains the usual reason a value carries junk: ConfigParser only strips
// inline comments that start with " ;", never "#".
func hashHint(raw string) string {
	if strings.Contains(raw, "#") {
		return " (ConfigParser keeps an inline '# comment' as part of the value: put comments on their own line, or after ' ;')"
	}
	return ""
}

// pyList reads key as a Python list (or tuple) of strings, or def when missing.
func (p *parser) pyList(o Options, key string, def []string) []string {
	ss, err := o.Strings(key, def)
	p.add(err)
	if err != nil {
		return def
	}
	return ss
}

// flexList reads key as a Python list of strings or, when the value does not start
// like a Python literal, as a comma-separated list; def when missing.
func (p *parser) flexList(o Options, key string, def []string) []string {
	v, ok := o[key]
	if !ok {
		return def
	}
	s := strings.TrimSpace(v.Raw)
	if s != "" && strings.ContainsRune("[('\"", rune(s[0])) {
		return p.pyList(o, key, def)
	}
	out := []string{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// addr parses an IP address; zones are not allowed.
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("not an IP address: %q", s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("IPv6 zone not allowed: %q", s)
	}
	return a, nil
}

// listenAddrs checks that every element is an IP address or "" (all addresses).
func (p *parser) listenAddrs(o Options, key string, list []string) {
	for _, s := range list {
		if s == "" {
			continue
		}
		if _, err := parseAddr(s); err != nil {
			p.errorf(o[key].Pos, key, "%v", err)
		}
	}
}

// ---- [global] ----

func (p *parser) global(g *Global, s *iniSection, o Options, inherited map[string]bool) {
	g.Options = o
	p.globalExplicit = map[string]bool{}
	for name := range o {
		if !inherited[name] {
			p.globalExplicit[name] = true
		}
	}
	for _, name := range sortedKeys(o) {
		if inherited[name] || globalKeys[name] || p.referenced[name] {
			continue
		}
		v := o[name]
		switch {
		case cliKeys[name] != "":
			p.warnf(v.Pos, name, "ignored: PyBal and kubal take this from the command line (%s)", cliKeys[name])
		case serviceKeys[name]:
			p.warnf(v.Pos, name, "unknown [global] key (it is a per-service key); ignored")
		default:
			p.warnf(v.Pos, name, "unknown [global] key; ignored%s", suggest(name, globalKeys))
		}
	}

	g.BGP = p.bool(o, "bgp", false)
	if o.Has("bgp-local-asn") {
		g.BGPLocalASN = uint32(p.integer(o, "bgp-local-asn", 0, 1, math.MaxUint32))
	}
	if v, ok := o["bgp-as-path"]; ok {
		g.BGPASPath = []uint32{}
		for _, f := range strings.Fields(v.Raw) {
			n, err := strconv.ParseUint(f, 10, 32)
			if err != nil || n == 0 {
				p.errorf(v.Pos, "bgp-as-path", "%q is not an AS number in [1, 4294967295] (want space-separated ASNs)", f)
				continue
			}
			g.BGPASPath = append(g.BGPASPath, uint32(n))
		}
	} else if g.BGPLocalASN != 0 {
		g.BGPASPath = []uint32{g.BGPLocalASN}
	}
	g.BGPMED = uint32(p.integer(o, "bgp-med", 0, 0, math.MaxUint32))
	g.BGPNextHopIPv4 = p.nextHop(o, "bgp-nexthop-ipv4", false)
	g.BGPNextHopIPv6 = p.nextHop(o, "bgp-nexthop-ipv6", true)
	if v, ok := o["bgp-peer-address"]; ok {
		raw := strings.TrimSpace(v.Raw)
		var peers []string
		if strings.HasPrefix(raw, "[") {
			peers = p.pyList(o, "bgp-peer-address", nil)
		} else if raw != "" {
			peers = []string{raw}
		}
		seen := map[netip.Addr]bool{}
		for _, s := range peers {
			a, err := parseAddr(s)
			switch {
			case err != nil:
				p.errorf(v.Pos, "bgp-peer-address", "%v", err)
				continue
			case a.IsUnspecified() || a.IsMulticast():
				p.errorf(v.Pos, "bgp-peer-address", "%s cannot be a BGP peer", a)
				continue
			case seen[a.Unmap()]:
				p.errorf(v.Pos, "bgp-peer-address", "peer %s listed twice", a.Unmap())
				continue
			}
			seen[a.Unmap()] = true
			g.BGPPeerAddresses = append(g.BGPPeerAddresses, a)
		}
	}
	g.BGPLocalIPs = p.pyList(o, "bgp-local-ips", g.BGPLocalIPs)
	p.listenAddrs(o, "bgp-local-ips", g.BGPLocalIPs)
	g.BGPLocalPort = p.port(o, "bgp-local-port", g.BGPLocalPort)

	g.Instrumentation = p.bool(o, "instrumentation", false)
	g.InstrumentationPort = p.port(o, "instrumentation_port", g.InstrumentationPort)
	g.InstrumentationIPs = p.pyList(o, "instrumentation_ips", g.InstrumentationIPs)
	p.listenAddrs(o, "instrumentation_ips", g.InstrumentationIPs)
	g.AdvertisedInstrumentationIPs = p.flexList(o, "advertised_instrumentation_ips", nil)
	for _, s := range g.AdvertisedInstrumentationIPs {
		if _, err := parseAddr(s); err != nil {
			p.errorf(o["advertised_instrumentation_ips"].Pos, "advertised_instrumentation_ips", "%v", err)
		}
	}
	g.DryRun = p.bool(o, "dry-run", false)

	g.EtcdEndpoints = p.flexList(o, "etcd-endpoints", nil)
	g.EtcdCA = o.String("etcd-ca", "")
	g.EtcdCert = o.String("etcd-cert", "")
	g.EtcdKey = o.String("etcd-key", "")
	p.pair(o, "etcd-cert", "etcd-key")
	p.etcdEndpoints(g, o)
	g.ConftoolPrefix = o.String("conftool-prefix", g.ConftoolPrefix)
	if v, ok := o["conftool-prefix"]; ok && !strings.HasPrefix(g.ConftoolPrefix, "/") {
		p.errorf(v.Pos, "conftool-prefix", "%q is not an absolute etcd key prefix (want e.g. /conftool/v1/pools)", g.ConftoolPrefix)
	}
	g.Kubeconfig = o.String("kubeconfig", "")

	g.AdminPort = p.port(o, "admin_port", g.AdminPort)
	g.AdminIPs = p.pyList(o, "admin_ips", g.AdminIPs)
	p.listenAddrs(o, "admin_ips", g.AdminIPs)
	g.AdminTokenFile = o.String("admin-token-file", "")
	g.AdminTLSCert = o.String("admin-tls-cert", "")
	g.AdminTLSKey = o.String("admin-tls-key", "")
	g.AdminClientCA = o.String("admin-client-ca", "")
	p.pair(o, "admin-tls-cert", "admin-tls-key")
	if v, ok := o["admin-client-ca"]; ok && g.AdminTLSCert == "" {
		p.errorf(v.Pos, "admin-client-ca", "client certificates need TLS: set admin-tls-cert and admin-tls-key too")
	}
	g.StateFile = o.String("state-file", g.StateFile)
	if v, ok := o["state-file"]; ok && !strings.HasPrefix(g.StateFile, "/") {
		p.errorf(v.Pos, "state-file", "%q is not an absolute path", g.StateFile)
	}

	if o.Has("bgp-hold-time") {
		// RFC 4271 §4.2: 0 (no keepalives) or at least 3 seconds.
		ht := p.integer(o, "bgp-hold-time", 180, 0, 65535)
		if ht == 1 || ht == 2 {
			p.errorf(o["bgp-hold-time"].Pos, "bgp-hold-time", "%d: the hold time must be 0 or at least 3 seconds (RFC 4271)", ht)
			ht = 180
		}
		g.BGPHoldTime = time.Duration(ht) * time.Second
	}
	g.BGPCommunities = p.communities(o)
	g.BGPBFD = p.bool(o, "bgp-bfd", false)
	g.BGPBFDMinRx = time.Duration(p.integer(o, "bgp-bfd-min-rx", 300, 1, 60000)) * time.Millisecond
	g.BGPBFDMinTx = time.Duration(p.integer(o, "bgp-bfd-min-tx", 300, 1, 60000)) * time.Millisecond
	g.BGPBFDMultiplier = int(p.integer(o, "bgp-bfd-multiplier", 3, 1, 255))
	g.BGPGracefulRestart = p.bool(o, "bgp-graceful-restart", false)
	g.VIPAddresses = p.bool(o, "vip-addresses", false)
	g.ActiveActive = p.bool(o, "active-active", false)
	p.activeActive = g.ActiveActive
	g.IPVSExpireNodestConn = p.bool(o, "ipvs-expire-nodest-conn", g.IPVSExpireNodestConn)
}

func (p *parser) nextHop(o Options, key string, v6 bool) netip.Addr {
	v, ok := o[key]
	if !ok {
		return netip.Addr{}
	}
	a, err := parseAddr(v.Raw)
	if err != nil {
		p.errorf(v.Pos, key, "%v", err)
		return netip.Addr{}
	}
	if v6 != (a.Is6() && !a.Is4In6()) {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		p.errorf(v.Pos, key, "%s is not an %s address", a, fam)
		return netip.Addr{}
	}
	if a.IsUnspecified() || a.IsMulticast() {
		p.errorf(v.Pos, key, "%s cannot be a next hop", a)
		return netip.Addr{}
	}
	return a
}

// pair reports one of two keys set without the other.
func (p *parser) pair(o Options, a, b string) {
	switch {
	case o.Has(a) && !o.Has(b):
		p.errorf(o[a].Pos, a, "set without %s", b)
	case o.Has(b) && !o.Has(a):
		p.errorf(o[b].Pos, b, "set without %s", a)
	}
}

func (p *parser) etcdEndpoints(g *Global, o Options) {
	v := o["etcd-endpoints"]
	tls := g.EtcdCA != "" || g.EtcdCert != "" || g.EtcdKey != ""
	for _, ep := range g.EtcdEndpoints {
		if strings.HasPrefix(ep, "https://") {
			tls = true
		}
	}
	for _, ep := range g.EtcdEndpoints {
		host := ep
		if i := strings.Index(ep, "://"); i >= 0 {
			u, err := url.Parse(ep)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				p.errorf(v.Pos, "etcd-endpoints", "%q is not an etcd endpoint (want http(s)://host:port or host:port)", ep)
				continue
			}
			host = u.Hostname()
		} else if h, _, err := splitHostPort(ep); err == nil {
			host = h
		} else {
			p.errorf(v.Pos, "etcd-endpoints", "%q is not an etcd endpoint (want http(s)://host:port or host:port)", ep)
			continue
		}
		if !tls && !isLoopback(host) {
			p.warnf(v.Pos, "etcd-endpoints", "%q is reached without TLS (set etcd-ca/etcd-cert/etcd-key or use https://)", ep)
		}
	}
}

func splitHostPort(s string) (host, port string, err error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return "", "", fmt.Errorf("no port")
	}
	host, port = strings.Trim(s[:i], "[]"), s[i+1:]
	if _, err := strconv.ParseUint(port, 10, 16); err != nil || host == "" {
		return "", "", fmt.Errorf("bad port")
	}
	return host, port, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// communities reads bgp-communities: standard communities "asn:value", 16 bits each,
// or a well-known name (ParseCommunity, the parser the BGP speaker uses too).
func (p *parser) communities(o Options) []string {
	list := p.flexList(o, "bgp-communities", nil)
	var out []string
	for _, c := range list {
		if _, err := ParseCommunity(c); err != nil {
			p.errorf(o["bgp-communities"].Pos, "bgp-communities", "%v", err)
			continue
		}
		out = append(out, c)
	}
	return out
}

// Well-known communities (RFC 1997, RFC 7999).
const (
	CommunityNoExport          uint32 = 0xFFFFFF01
	CommunityNoAdvertise       uint32 = 0xFFFFFF02
	CommunityNoExportSubconfed uint32 = 0xFFFFFF03
	CommunityBlackhole         uint32 = 0xFFFF029A
)

// ParseCommunity parses a BGP standard community: "asn:value" (each 0..65535) or one
// of the well-known names no-export, no-advertise, no-export-subconfed, blackhole
// (case-insensitive). It is the only community parser: config validation and the BGP
// speaker both use it, so a config --check-config accepts is one the speaker takes.
func ParseCommunity(c string) (uint32, error) {
	switch strings.ToLower(strings.TrimSpace(c)) {
	case "no-export":
		return CommunityNoExport, nil
	case "no-advertise":
		return CommunityNoAdvertise, nil
	case "no-export-subconfed":
		return CommunityNoExportSubconfed, nil
	case "blackhole":
		return CommunityBlackhole, nil
	}
	hi, lo, ok := strings.Cut(strings.TrimSpace(c), ":")
	a, errA := strconv.ParseUint(hi, 10, 16)
	v, errB := strconv.ParseUint(lo, 10, 16)
	if !ok || errA != nil || errB != nil {
		return 0, fmt.Errorf("%q is not a standard community (want asn:value, each 0-65535, or no-export, no-advertise, no-export-subconfed, blackhole)", c)
	}
	return uint32(a)<<16 | uint32(v), nil
}

// ---- [DEFAULT] ----

func (p *parser) checkDefaultKeys(s *iniSection) {
	for _, name := range s.order {
		if globalKeys[name] || serviceKeys[name] || cliKeys[name] != "" || p.referenced[name] {
			continue
		}
		if prefix, opt, ok := strings.Cut(name, "."); ok {
			if mon, ok := monitorByPrefix(prefix); ok && contains(MonitorOptionNames(mon), opt) {
				continue
			}
		}
		p.warnf(s.opts[name].pos, name, "unknown key in [DEFAULT]; ignored%s", suggest(name, serviceKeys, globalKeys))
	}
}

// ---- services ----

func (p *parser) service(s *iniSection, o Options, inherited map[string]bool) *Service {
	return p.serviceWith(s, o, inherited, false)
}

// serviceWith reads a service section; template: the [k8s-services] defaults, where
// the keys each Kubernetes Service sets (protocol, ip, port, config) are not required.
func (p *parser) serviceWith(s *iniSection, o Options, inherited map[string]bool, template bool) *Service {
	svc := &Service{
		Name:            s.name,
		Pos:             s.pos,
		BGP:             true,
		DepoolThreshold: 0.5,
		Forwarding:      ForwardDR,
		DepoolMode:      DepoolDelete,
		DrainTimeout:    60 * time.Second,
		VIPInterface:    "lo",
		K8sCordoned:     "depool",
		Options:         o,
	}
	// The section name is the pool name: a Prometheus label value (which must be
	// UTF-8: an invalid one panicked at start), a URL path element and a log field.
	if !utf8.ValidString(s.name) {
		p.errorf(s.pos, "", "section name %s is not valid UTF-8", strconv.Quote(s.name))
	} else if strings.IndexFunc(s.name, unicode.IsControl) >= 0 {
		p.errorf(s.pos, "", "section name %s holds a control character", strconv.Quote(s.name))
	}
	if strings.EqualFold(s.name, "global") {
		p.warnf(s.pos, "", "section [%s] is read as a service: only [global] (lower case) holds global settings", s.name)
	}
	for _, key := range []string{"protocol", "ip", "port", "scheduler", "config"} {
		if !o.Has(key) && !(template && key != "scheduler") {
			p.errorf(s.pos, key, "required key missing in [%s]", s.name)
		}
	}

	svc.Protocol = p.enum(o, "protocol", "", []string{"tcp", "udp"})
	if v, ok := o["ip"]; ok {
		a, err := parseAddr(v.Raw)
		switch {
		case err != nil:
			p.errorf(v.Pos, "ip", "%v%s", err, hashHint(v.Raw))
		case a.Is4In6():
			p.errorf(v.Pos, "ip", "%s is an IPv4-mapped IPv6 address; write the IPv4 address", a)
		case a.IsUnspecified() || a.IsMulticast():
			p.errorf(v.Pos, "ip", "%s cannot be a service address", a)
		default:
			svc.IP = a
		}
	}
	svc.Port = uint16(p.port(o, "port", 0))
	svc.Scheduler = p.enum(o, "scheduler", "", schedulers)
	svc.OPS = p.bool(o, "ops", false)
	if svc.OPS && svc.Protocol == "tcp" {
		p.errorf(o["ops"].Pos, "ops", "one-packet scheduling (ops) is only for udp services")
	}
	if v, ok := o["config"]; ok {
		svc.ConfigURL = strings.TrimSpace(v.Raw)
		if err := checkConfigURL(svc.ConfigURL); err != nil {
			p.errorf(v.Pos, "config", "%v", err)
		}
	}
	svc.BGP = p.bool(o, "bgp", true)
	if o.Has("bgp-med") {
		med := uint32(p.integer(o, "bgp-med", 0, 0, math.MaxUint32))
		svc.BGPMED = &med
	}
	if v, ok := o["depool-threshold"]; ok {
		t, err := o.Float("depool-threshold", 0.5)
		p.add(err)
		if err == nil && (t < 0 || t > 1) {
			p.errorf(v.Pos, "depool-threshold", "%v is outside [0, 1]", t)
			t = 0.5
		}
		svc.DepoolThreshold = t
	}
	if template && !o.Has("monitors") {
		// Each Kubernetes Service then gets the default monitors of its traffic policy.
	} else {
		svc.Monitors = p.monitors(s, o)
	}

	// Forwarding: PyBal's production `tunneling = true` or kubal's `forwarding`.
	tunneling := p.bool(o, "tunneling", false)
	if tunneling {
		svc.Forwarding = ForwardTunnel
	}
	if o.Has("forwarding") {
		fw := Forwarding(p.enum(o, "forwarding", "", []string{"dr", "tunnel", "nat"}))
		if fw != "" {
			if o.Has("tunneling") && tunneling != (fw == ForwardTunnel) {
				p.errorf(o["forwarding"].Pos, "forwarding", "forwarding = %s conflicts with tunneling = %s (line %d)",
					fw, strings.TrimSpace(o["tunneling"].Raw), o["tunneling"].Pos.Line)
			}
			svc.Forwarding = fw
		}
	}

	svc.SchedulerFlags = p.flexList(o, "scheduler-flags", nil)
	seenFlag := map[string]bool{}
	for _, f := range svc.SchedulerFlags {
		pos := o["scheduler-flags"].Pos
		sched, known := schedulerFlags[f]
		switch {
		case !known:
			p.errorf(pos, "scheduler-flags", "unknown flag %q (want sh-port, sh-fallback, mh-port, mh-fallback)", f)
		case svc.Scheduler != "" && sched != svc.Scheduler:
			p.errorf(pos, "scheduler-flags", "flag %q is for scheduler %s, not %s", f, sched, svc.Scheduler)
		case seenFlag[f]:
			p.warnf(pos, "scheduler-flags", "flag %q listed twice", f)
		}
		seenFlag[f] = true
	}

	svc.DepoolMode = DepoolMode(p.enum(o, "depool-mode", string(DepoolDelete), []string{"delete", "drain"}))
	if v, ok := o["drain-timeout"]; ok {
		d, err := o.Seconds("drain-timeout", svc.DrainTimeout)
		p.add(err)
		svc.DrainTimeout = d
		if svc.DepoolMode != DepoolDrain {
			p.warnf(v.Pos, "drain-timeout", "has no effect unless depool-mode = drain")
		}
	}
	svc.BGPCommunities = p.communities(o)
	svc.BGPWithdrawWhenEmpty = p.bool(o, "bgp-withdraw-when-empty", false)
	if v, ok := o["conftool"]; ok {
		svc.Conftool = strings.TrimSpace(v.Raw)
		parts := strings.Split(svc.Conftool, "/")
		bad := len(parts) != 3
		for _, part := range parts {
			bad = bad || part == "" || part == "." || part == ".." || strings.TrimSpace(part) != part
		}
		if bad {
			p.errorf(v.Pos, "conftool", "%q is not dc/cluster/service", svc.Conftool)
		}
		if strings.HasPrefix(svc.ConfigURL, "etcd://") {
			p.warnf(v.Pos, "conftool", "the servers already come from etcd (config = etcd://...); admin actions use that key")
		}
	}
	if v, ok := o["vip-interface"]; ok {
		name := strings.TrimSpace(v.Raw)
		if name == "" || len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/ \t:") {
			p.errorf(v.Pos, "vip-interface", "%q is not a network interface name", name)
		} else {
			svc.VIPInterface = name
		}
	}
	svc.K8sCordoned = p.enum(o, "k8s-cordoned", "depool", []string{"depool", "keep"})
	svc.K8sTaints = p.flexList(o, "k8s-taints", nil)
	for _, taint := range svc.K8sTaints {
		// k8ssource matches taint keys; "key=value:Effect" would never match.
		if strings.ContainsAny(taint, "=: \t") {
			p.errorf(o["k8s-taints"].Pos, "k8s-taints", "%q is not a taint key (list keys only, e.g. node.kubernetes.io/unreachable)", taint)
		}
	}
	if !strings.HasPrefix(svc.ConfigURL, "k8s://") && !template {
		for _, key := range []string{"k8s-cordoned", "k8s-taints"} {
			if v, ok := o[key]; ok && !inherited[key] {
				p.warnf(v.Pos, key, "has no effect: the servers do not come from k8s://")
			}
		}
	}

	// A Kubernetes-declared service's nodes may not serve its VIP yet when it is
	// created (kube-proxy has not seen the status): check them first.
	svc.PoolUnchecked = p.bool(o, "pool-unchecked", !template && !p.declared)
	svc.ActiveActive = p.bool(o, "active-active", p.activeActive)
	if svc.ActiveActive && svc.Scheduler != "mh" {
		pos, from := s.pos, " (active-active = yes in [global])"
		if v, ok := o["active-active"]; ok {
			pos, from = v.Pos, ""
		}
		sched := svc.Scheduler
		if sched == "" {
			sched = "the kernel's default (wlc)"
		}
		p.errorf(pos, "active-active", "[%s] is active-active%s and needs scheduler = mh, not %s: with any other scheduler each director picks its own real server for a flow, and a flow moved to another director by the router breaks", s.name, from, sched)
	}

	p.serviceKeys(svc, o, inherited)
	if p.explicit == nil {
		p.explicit = map[*Service]map[string]bool{}
	}
	p.explicit[svc] = map[string]bool{}
	for name := range o {
		if !inherited[name] {
			p.explicit[svc][name] = true
		}
	}
	return svc
}

func (p *parser) monitors(s *iniSection, o Options) []string {
	v, ok := o["monitors"]
	if !ok {
		p.warnf(s.pos, "monitors", "no monitors in [%s]: its servers are never health-checked (as in PyBal)", s.name)
		return nil
	}
	lit, err := ParseLiteral(strings.TrimSpace(v.Raw))
	if err != nil {
		p.errorf(v.Pos, "monitors", "does not parse as a Python list: %v (want e.g. [\"ProxyFetch\", \"IdleConnection\"])", err)
		return nil
	}
	if lit.Kind == LitString {
		// PyBal: "not a list" is CRITICAL and stops the daemon (server.py:185-223).
		p.errorf(v.Pos, "monitors", "a string, not a list: write [%q]", lit.Str)
		return nil
	}
	names, err := lit.Strings()
	if err != nil {
		p.errorf(v.Pos, "monitors", "%v (want e.g. [\"ProxyFetch\", \"IdleConnection\"])", err)
		return nil
	}
	known := MonitorNames()
	out := []string{}
	for _, n := range names {
		if !contains(known, n) {
			hint := ""
			for _, k := range known {
				if strings.EqualFold(k, n) {
					hint = fmt.Sprintf(" (names are case-sensitive: write %q)", k)
				}
			}
			p.errorf(v.Pos, "monitors", "unknown monitor %q (known: %s)%s", n, strings.Join(known, ", "), hint)
			continue
		}
		if contains(out, n) {
			p.warnf(v.Pos, "monitors", "monitor %q listed twice", n)
			continue
		}
		out = append(out, n)
	}
	if len(names) == 0 {
		p.warnf(v.Pos, "monitors", "empty list: the servers of [%s] are never health-checked (as in PyBal)", s.name)
	}
	return out
}

// serviceKeys warns about every key of the section that nothing reads.
func (p *parser) serviceKeys(svc *Service, o Options, inherited map[string]bool) {
	for _, name := range sortedKeys(o) {
		if inherited[name] || serviceKeys[name] || p.referenced[name] {
			continue
		}
		v := o[name]
		if flag := cliKeys[name]; flag != "" {
			p.warnf(v.Pos, name, "ignored: PyBal and kubal take this from the command line (%s)", flag)
			continue
		}
		if prefix, opt, ok := strings.Cut(name, "."); ok {
			if mon, ok := monitorByPrefix(prefix); ok {
				opts := MonitorOptionNames(mon)
				switch {
				case !contains(opts, opt):
					p.warnf(v.Pos, name, "unknown %s option %q; ignored (known: %s)", mon, opt, strings.Join(opts, ", "))
				case !contains(svc.Monitors, mon):
					p.warnf(v.Pos, name, "option of monitor %s, which is not in this service's monitors; ignored", mon)
				}
				continue
			}
		}
		if globalKeys[name] {
			p.warnf(v.Pos, name, "unknown per-service key (it is a [global] key); ignored")
			continue
		}
		p.warnf(v.Pos, name, "unknown key in [%s]; ignored%s", svc.Name, suggest(name, serviceKeys))
	}
}

func checkConfigURL(u string) error {
	scheme := ""
	for _, s := range configSchemes {
		if strings.HasPrefix(u, s) {
			scheme = s
		}
	}
	switch scheme {
	case "":
		return fmt.Errorf("unsupported URL %q: want file://, http://, https://, etcd:// or k8s://%s", u, hashHint(u))
	case "file://":
		if !strings.HasPrefix(u[len(scheme):], "/") {
			return fmt.Errorf("%q: file:// needs an absolute path, e.g. file:///etc/pybal/pools/text", u)
		}
		return nil
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("bad URL %q: %v", u, errors.Unwrap(err))
	}
	switch scheme {
	case "http://", "https://":
		if parsed.Host == "" {
			return fmt.Errorf("%q has no host", u)
		}
	case "etcd://":
		if parsed.Host == "" || strings.Trim(parsed.Path, "/") == "" {
			return fmt.Errorf("%q: want etcd://host[:port]/<key path>", u)
		}
	}
	return nil
}

// ---- checks across sections ----

func (p *parser) crossCheck(cfg *Config, globalPos Pos, hasGlobal bool) {
	// Two sections may not program the same IPVS virtual service.
	byKey := map[string]*Service{}
	for _, s := range cfg.Services {
		if !s.IP.IsValid() || s.Port == 0 || s.Protocol == "" {
			continue
		}
		if first, ok := byKey[s.Key()]; ok {
			p.errorf(s.Pos, "", "[%s] is the same virtual service (%s) as [%s] (line %d)", s.Name, s.Key(), first.Name, first.Pos.Line)
			continue
		}
		byKey[s.Key()] = s
	}

	// All bgp-enabled services of one IP must agree on the MED (bgpfailover.py:150-154).
	byIP := map[netip.Addr]*Service{}
	var v4, v6 bool
	for _, s := range cfg.Services {
		if !s.BGP || !s.IP.IsValid() {
			continue
		}
		if s.IPv6() {
			v6 = true
		} else {
			v4 = true
		}
		first, ok := byIP[s.IP]
		if !ok {
			byIP[s.IP] = s
			continue
		}
		if !sameMED(first.BGPMED, s.BGPMED) {
			pos := s.Pos
			if v, ok := s.Options["bgp-med"]; ok {
				pos = v.Pos
			}
			p.errorf(pos, "bgp-med", "[%s] announces %s with MED %s but [%s] (line %d) uses MED %s: services sharing an IP must agree",
				s.Name, s.IP, medString(s.BGPMED), first.Name, first.Pos.Line, medString(first.BGPMED))
		}
	}

	g := &cfg.Global
	for _, s := range cfg.Services {
		if s.Conftool != "" && len(g.EtcdEndpoints) == 0 && !strings.HasPrefix(s.ConfigURL, "etcd://") {
			p.errorf(s.Options["conftool"].Pos, "conftool", "needs etcd: set etcd-endpoints in [global]")
		}
	}
	if t := cfg.K8sServices; t != nil {
		if v, ok := t.Options["conftool"]; ok && len(g.EtcdEndpoints) == 0 {
			p.errorf(v.Pos, "conftool", "needs etcd: set etcd-endpoints in [global]")
		}
		// A VIP range must not hold a static service's VIP: allocation would hand it
		// out (it skips it, but an SRE reading the ranges would not expect the clash).
		for _, s := range cfg.Services {
			for _, r := range t.VIPRanges {
				if s.IP.IsValid() && r.Contains(s.IP) {
					p.warnf(t.rangesPos, "vip-ranges", "%s holds the VIP %s of [%s] (line %d): it is never allocated", r, s.IP, s.Name, s.Pos.Line)
				}
			}
		}
	}
	p.noEffect(cfg, hasGlobal)
	if !hasGlobal || !g.BGP {
		return
	}
	if !g.Options.Has("bgp-local-asn") {
		p.errorf(globalPos, "bgp-local-asn", "required when bgp = yes")
	}
	if v4 && !g.Options.Has("bgp-nexthop-ipv4") {
		p.errorf(globalPos, "bgp-nexthop-ipv4", "required when bgp = yes and an IPv4 service has bgp enabled")
	}
	if v6 && !g.Options.Has("bgp-nexthop-ipv6") {
		p.errorf(globalPos, "bgp-nexthop-ipv6", "required when bgp = yes and an IPv6 service has bgp enabled")
	}
	// The BGP speaker needs an IPv4 router ID even on an IPv6-only host: an IPv4
	// address in bgp-local-ips, or bgp-nexthop-ipv4 (the "required" error above
	// already covers hosts with IPv4 services).
	if !g.RouterID().IsValid() && !(v4 && !g.Options.Has("bgp-nexthop-ipv4")) {
		p.errorf(globalPos, "bgp-nexthop-ipv4", "needed as the BGP router ID when bgp = yes (or put an IPv4 address in bgp-local-ips)")
	}
	if len(g.BGPPeerAddresses) == 0 && !g.Options.Has("bgp-peer-address") {
		p.warnf(globalPos, "bgp-peer-address", "bgp = yes but no peer is configured: nothing will be announced")
	}
}

// RouterID is the BGP router ID the speaker uses: the first specific IPv4 address of
// bgp-local-ips, else bgp-nexthop-ipv4 (PyBal: the session's local IPv4 address).
// The zero Addr means there is none, which the config rejects when bgp = yes.
func (g *Global) RouterID() netip.Addr {
	for _, ip := range g.BGPLocalIPs {
		if a, err := netip.ParseAddr(ip); err == nil && a.Unmap().Is4() && !a.Unmap().IsUnspecified() {
			return a.Unmap()
		}
	}
	if g.BGPNextHopIPv4.IsValid() && g.BGPNextHopIPv4.Unmap().Is4() && !g.BGPNextHopIPv4.Unmap().IsUnspecified() {
		return g.BGPNextHopIPv4.Unmap()
	}
	return netip.Addr{}
}

// serviceBGPKeys are kubal's per-service keys that only change BGP announcements.
var serviceBGPKeys = []string{"bgp-communities", "bgp-withdraw-when-empty"}

// globalBGPKeys are kubal's [global] keys that only matter with bgp = yes.
var globalBGPKeys = []string{"bgp-hold-time", "bgp-communities", "bgp-bfd", "bgp-bfd-min-rx",
	"bgp-bfd-min-tx", "bgp-bfd-multiplier", "bgp-graceful-restart"}

// noEffect warns about every kubal key set in a section (not inherited from
// [DEFAULT]) that cannot have an effect with the rest of the config, naming why.
// PyBal's own keys are not warned about: PyBal configs carry them for other modes.
func (p *parser) noEffect(cfg *Config, hasGlobal bool) {
	// A key that already has an error gets no second finding.
	bad := map[Pos]map[string]bool{}
	for _, d := range p.errs {
		if bad[d.Pos] == nil {
			bad[d.Pos] = map[string]bool{}
		}
		bad[d.Pos][d.Key] = true
	}
	warnf := func(o Options, key, format string, args ...any) {
		if !bad[o[key].Pos][key] {
			p.warnf(o[key].Pos, key, format, args...)
		}
	}
	g := &cfg.Global
	bgpOn := hasGlobal && g.BGP
	for _, s := range cfg.Services {
		for _, key := range serviceBGPKeys {
			if !p.explicit[s][key] {
				continue
			}
			switch {
			case !bgpOn:
				warnf(s.Options, key, "has no effect: bgp is off in [global]")
			case !s.BGP:
				warnf(s.Options, key, "has no effect: bgp = no for [%s]", s.Name)
			}
		}
	}
	if !(hasGlobal && g.VIPAddresses) {
		for _, s := range cfg.Services {
			if p.explicit[s]["vip-interface"] {
				warnf(s.Options, "vip-interface", "has no effect: kubal manages VIP addresses only with vip-addresses = yes in [global]")
			}
		}
	}
	if !hasGlobal {
		return
	}
	for _, key := range globalBGPKeys {
		if p.globalExplicit[key] && !g.BGP {
			warnf(g.Options, key, "has no effect: bgp = no")
		}
	}
	if g.BGP && !g.BGPBFD {
		for _, key := range []string{"bgp-bfd-min-rx", "bgp-bfd-min-tx", "bgp-bfd-multiplier"} {
			if p.globalExplicit[key] {
				warnf(g.Options, key, "has no effect unless bgp-bfd = yes")
			}
		}
	}
	if g.AdminTokenFile == "" && g.AdminTLSCert == "" {
		for _, key := range []string{"admin_port", "admin_ips"} {
			if p.globalExplicit[key] {
				warnf(g.Options, key, "has no effect: the admin API starts only with admin-token-file or admin-tls-cert")
			}
		}
	}
	if p.globalExplicit["kubeconfig"] {
		k8s := cfg.K8sServices != nil // the template's controller reads Kubernetes too
		for _, s := range cfg.Services {
			k8s = k8s || strings.HasPrefix(s.ConfigURL, "k8s://")
		}
		if !k8s {
			warnf(g.Options, "kubeconfig", "has no effect: no service has config = k8s:// and there is no [k8s-services]")
		}
	}
}

func sameMED(a, b *uint32) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func medString(m *uint32) string {
	if m == nil {
		return "unset (the global bgp-med)"
	}
	return strconv.FormatUint(uint64(*m), 10)
}

func sortedKeys(o Options) []string {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if o[keys[i]].Pos.Line != o[keys[j]].Pos.Line {
			return o[keys[i]].Pos.Line < o[keys[j]].Pos.Line
		}
		return keys[i] < keys[j]
	})
	return keys
}

// suggest returns ` (did you mean "x"?)` for the closest known key, if close enough.
func suggest(name string, sets ...map[string]bool) string {
	best, bestD := "", 3
	for _, set := range sets {
		for k := range set {
			if d := editDistance(name, k); d < bestD || (d == bestD && best != "" && k < best) {
				best, bestD = k, d
			}
		}
	}
	if best == "" || bestD > 2 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 100
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
