package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/config"
)

const (
	// PyBal's OPEN hold time when bgp-hold-time is not set.
	defaultHoldTime = 180 * time.Second
	// Outgoing connect retry and idle hold after a reset (PyBal: 30 s each). An LVS
	// should be back in the routers' tables quickly once a peer is reachable again.
	connectRetry = 5 * time.Second
	// How often peer and BFD state are read back for the metrics.
	pollInterval = time.Second
	// Retry backoff bounds for GoBGP API errors.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Speaker is the embedded GoBGP speaker: it keeps one session per configured peer and
// advertises exactly the announcement set last given to Set.
type Speaker struct {
	g        config.Global
	log      *slog.Logger
	m        *metrics
	peers    []netip.Addr
	routerID netip.Addr
	hold     time.Duration

	mu      sync.Mutex
	desired map[netip.Prefix]Announcement
	closing bool              // Shutdown began: Set is ignored, nothing is (re)advertised
	srv     *server.BgpServer // set once Run started GoBGP
	kick    chan struct{}     // cap 1: a new desired set is waiting
	pollNow chan struct{}     // cap 1: a session came up, read peer state now
	bfdKick chan struct{}     // cap 1: a BGP session changed state, sync BFD (bfd.go)

	bfdMu     sync.Mutex
	bfdLeft   map[netip.Addr]bool // peers whose BGP session left Established since the last syncBFD
	bfdActive map[netip.Addr]bool // BFD enabled in GoBGP; owned by Run
	invalid   map[netip.Prefix]string

	// applyMu is held by the reconciler while it talks to GoBGP, so that Shutdown's
	// withdraw-all cannot be overtaken by an in-flight advertisement.
	applyMu    sync.Mutex
	advertised map[netip.Prefix]Announcement // owned under applyMu
	resync     bool                          // re-add everything on the next pass

	// bgpStopped is set once a graceful Detach has stopped BGP itself: GoBGP's Stop
	// then tries to stop it again and logs an ERROR ("not running") for a planned
	// restart, which minLevel drops.
	bgpStopped atomic.Bool

	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error
}

// New validates the BGP part of the [global] section and builds a Speaker. Errors
// name the offending key (with its file:line when known). With `bgp = no` the
// Speaker does nothing.
func New(g config.Global, log *slog.Logger, reg prometheus.Registerer) (*Speaker, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Speaker{
		g:            g,
		log:          log,
		desired:      map[netip.Prefix]Announcement{},
		advertised:   map[netip.Prefix]Announcement{},
		invalid:      map[netip.Prefix]string{},
		kick:         make(chan struct{}, 1),
		pollNow:      make(chan struct{}, 1),
		bfdKick:      make(chan struct{}, 1),
		bfdLeft:      map[netip.Addr]bool{},
		bfdActive:    map[netip.Addr]bool{},
		shutdownDone: make(chan struct{}),
		hold:         defaultHoldTime,
	}
	if g.BGP {
		if err := s.validate(); err != nil {
			return nil, err
		}
	}
	m, err := newMetrics(reg, g.BGPLocalASN)
	if err != nil {
		return nil, fmt.Errorf("bgp metrics: %w", err)
	}
	s.m = m
	// The collectors outlive a Speaker (reused after a reload): drop the BFD series of
	// a previous configuration.
	s.m.bfdUp.Reset()
	s.m.bfdOn.Set(0)
	if g.BGP && g.BGPBFD {
		s.m.bfdOn.Set(1)
	}
	if g.BGP {
		s.m.enabled.Set(1)
		for _, p := range s.peers {
			s.m.setSession(p, func(si *sessionInfo) { si.state = bgp.BGP_FSM_IDLE })
		}
	} else {
		s.m.enabled.Set(0)
	}
	return s, nil
}

func (s *Speaker) keyErr(key, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if v, ok := s.g.Options[key]; ok && v.Pos.File != "" {
		return fmt.Errorf("%s: %s: %s", v.Pos, key, msg)
	}
	return fmt.Errorf("%s: %s", key, msg)
}

func (s *Speaker) validate() error {
	g := &s.g
	if g.BGPLocalASN == 0 {
		return s.keyErr("bgp-local-asn", "required when bgp = yes (1..4294967295)")
	}
	for _, as := range g.BGPASPath {
		if as == 0 {
			return s.keyErr("bgp-as-path", "AS 0 is not a valid AS number")
		}
	}
	// No peer is allowed, as in config (a warning there): the speaker then announces
	// to nobody.
	seen := map[netip.Addr]bool{}
	for _, p := range g.BGPPeerAddresses {
		if !p.IsValid() || p.IsUnspecified() {
			return s.keyErr("bgp-peer-address", "invalid peer address %q", p)
		}
		p = p.Unmap()
		if seen[p] {
			return s.keyErr("bgp-peer-address", "peer %s listed twice", p)
		}
		seen[p] = true
		s.peers = append(s.peers, p)
	}
	if g.BGPLocalPort < 0 || g.BGPLocalPort > 65535 {
		return s.keyErr("bgp-local-port", "%d is not a TCP port", g.BGPLocalPort)
	}
	for _, ip := range g.BGPLocalIPs {
		if ip == "" {
			continue
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			return s.keyErr("bgp-local-ips", "%q is not an IP address", ip)
		}
	}
	if g.BGPNextHopIPv4.IsValid() && !g.BGPNextHopIPv4.Unmap().Is4() {
		return s.keyErr("bgp-nexthop-ipv4", "%s is not an IPv4 address", g.BGPNextHopIPv4)
	}
	if g.BGPNextHopIPv6.IsValid() && (!g.BGPNextHopIPv6.Is6() || g.BGPNextHopIPv6.Is4In6()) {
		return s.keyErr("bgp-nexthop-ipv6", "%s is not an IPv6 address", g.BGPNextHopIPv6)
	}
	if g.BGPHoldTime != 0 {
		if g.BGPHoldTime < 3*time.Second || g.BGPHoldTime > 65535*time.Second {
			return s.keyErr("bgp-hold-time", "%s is out of range (3s..65535s)", g.BGPHoldTime)
		}
		s.hold = g.BGPHoldTime.Truncate(time.Second)
	}
	for _, c := range g.BGPCommunities {
		if _, err := ParseCommunity(c); err != nil {
			return s.keyErr("bgp-communities", "%v", err)
		}
	}
	if g.BGPBFD {
		for _, d := range []struct {
			key string
			v   time.Duration
		}{{"bgp-bfd-min-rx", g.BGPBFDMinRx}, {"bgp-bfd-min-tx", g.BGPBFDMinTx}} {
			if d.v < 0 || (d.v > 0 && d.v < time.Millisecond) || d.v > time.Hour {
				return s.keyErr(d.key, "%s is out of range (1ms..1h)", d.v)
			}
		}
		if g.BGPBFDMultiplier < 0 || g.BGPBFDMultiplier > 255 {
			return s.keyErr("bgp-bfd-multiplier", "%d is out of range (1..255)", g.BGPBFDMultiplier)
		}
	}
	// GoBGP needs an IPv4 router ID; config.Load rejects a config without one, with
	// the same rule (Global.RouterID).
	s.routerID = g.RouterID()
	if !s.routerID.IsValid() {
		return s.keyErr("bgp-nexthop-ipv4", "needed as the BGP router ID (or an IPv4 address in bgp-local-ips)")
	}
	return nil
}

// ParseCommunity is config.ParseCommunity: one parser for validation and the wire.
func ParseCommunity(c string) (uint32, error) { return config.ParseCommunity(c) }

// Set replaces the desired announcement set. It never blocks: the speaker diffs it
// against what it advertises and converges in the background (retrying GoBGP errors).
func (s *Speaker) Set(anns []Announcement) {
	want := make(map[netip.Prefix]Announcement, len(anns))
	for _, a := range anns {
		a.ASPath = slices.Clone(a.ASPath)
		a.Communities = slices.Clone(a.Communities)
		want[a.Prefix] = a
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.desired = want
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Speaker) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Advertised returns the announcements currently handed to GoBGP, sorted by prefix.
func (s *Speaker) Advertised() []Announcement {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	out := slices.Collect(maps.Values(s.advertised))
	slices.SortFunc(out, func(a, b Announcement) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

// Run starts GoBGP, its listener and one session per peer, then keeps the advertised
// routes equal to the last Set until ctx is done. GoBGP errors are logged and
// retried, never returned. If Shutdown was not called before ctx ends, Run does it
// (bounded to 2 s).
func (s *Speaker) Run(ctx context.Context) error {
	if !s.g.BGP {
		<-ctx.Done()
		return nil
	}
	srv := s.start(ctx)
	if srv == nil { // ctx done or Shutdown before GoBGP could start
		<-ctx.Done()
		return nil
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.srv = srv
	}
	s.mu.Unlock()
	if closing {
		srv.Stop()
		<-ctx.Done()
		return nil
	}
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	if err := srv.WatchEvent(wctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.onPeerEvent}, server.WatchPeer()); err != nil {
		s.log.Warn("bgp: cannot watch peer state; metrics only from polling", "err", err)
	}

	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var retry <-chan time.Time
	backoff := minBackoff
	reconcileNow := true
	for {
		if reconcileNow {
			if err := s.reconcile(srv); err != nil {
				s.log.Warn("bgp: updating announcements failed, will retry", "err", err, "retry_in", backoff)
				retry = time.After(backoff)
				backoff = min(backoff*2, maxBackoff)
			} else {
				retry, backoff = nil, minBackoff
			}
			reconcileNow = false
		}
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := s.Shutdown(sctx)
			cancel()
			if err != nil {
				s.log.Warn("bgp: shutdown", "err", err)
			}
			return nil
		case <-s.kick:
			reconcileNow = true
		case <-retry:
			reconcileNow = true
		case <-tick.C:
			if !s.isClosing() {
				s.poll(ctx, srv)
				s.syncBFD(ctx, srv)
			}
		case <-s.pollNow:
			if !s.isClosing() {
				s.poll(ctx, srv)
			}
		case <-s.bfdKick:
			s.syncBFD(ctx, srv)
		}
	}
}

// start brings GoBGP up, retrying (e.g. the listen port still in use) until ctx ends.
func (s *Speaker) start(ctx context.Context) *server.BgpServer {
	backoff := minBackoff
	for {
		srv, err := s.startOnce(ctx)
		if err == nil {
			return srv
		}
		s.log.Warn("bgp: cannot start the speaker, will retry", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-s.shutdownDone:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

func (s *Speaker) startOnce(ctx context.Context) (*server.BgpServer, error) {
	// GoBGP logs every FSM step at info; keep its warnings, or everything when debugging.
	lvl := slog.LevelWarn
	if s.log.Enabled(ctx, slog.LevelDebug) {
		lvl = slog.LevelDebug
	}
	glog := slog.New(minLevel{h: s.log.Handler(), min: lvl, stopped: &s.bgpStopped}).With("component", "gobgp")
	srv := server.NewBgpServer(server.LoggerOption(glog, nil))
	go srv.Serve()
	port := int32(s.g.BGPLocalPort)
	if port == 0 {
		port = bgp.BGP_PORT
	}
	var listen []string
	for _, ip := range s.g.BGPLocalIPs {
		if ip != "" {
			listen = append(listen, ip)
		}
	}
	err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:             s.g.BGPLocalASN,
		RouterId:        s.routerID.String(),
		ListenPort:      port,
		ListenAddresses: listen,
	}})
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("start GoBGP (listen port %d): %w", port, err)
	}
	for _, p := range s.peers {
		// BFD starts once the session is Established (syncBFD, bfd.go).
		if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerConfig(p, false)}); err != nil {
			srv.Stop()
			return nil, fmt.Errorf("add peer %s: %w", p, err)
		}
	}
	s.log.Info("bgp: speaker started", "local_asn", s.g.BGPLocalASN, "router_id", s.routerID,
		"port", port, "peers", s.peers, "hold_time", s.hold, "bfd", s.g.BGPBFD)
	return srv, nil
}

// peerConfig is the GoBGP config of one peer; bfd says whether its BFD session runs
// (with bgp-bfd = yes; see bfd.go).
func (s *Speaker) peerConfig(addr netip.Addr, bfd bool) *api.Peer {
	hold := uint64(s.hold / time.Second)
	p := &api.Peer{
		// PeerAsn 0: accept whatever AS the router announces, as PyBal does.
		Conf: &api.PeerConf{NeighborAddress: addr.String(), LocalAsn: s.g.BGPLocalASN},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:           uint64(connectRetry / time.Second),
			HoldTime:               hold,
			KeepaliveInterval:      max(hold/3, 1),
			IdleHoldTimeAfterReset: uint64(connectRetry / time.Second),
		}},
		AfiSafis: []*api.AfiSafi{
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
			{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}, Enabled: true}},
		},
	}
	if s.g.BGPGracefulRestart {
		// Advertise the capability so that routers keep our routes across a planned
		// restart (Detach); Shutdown still withdraws and sends a Cease. We come up as
		// a restarting speaker with forwarding state preserved (IPVS kept running):
		// routers keep the stale routes until our End-of-RIB instead of dropping them
		// at the OPEN. GoBGP then sends its routes once every peer sent its EoR, or
		// after DeferralTime.
		p.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: 120,
			DeferralTime: 10, LocalRestarting: true}
		for _, af := range p.AfiSafis {
			af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
	}
	if s.g.BGPBFD {
		rx, tx, mult := s.g.BGPBFDMinRx, s.g.BGPBFDMinTx, s.g.BGPBFDMultiplier
		if rx == 0 {
			rx = 300 * time.Millisecond
		}
		if tx == 0 {
			tx = 300 * time.Millisecond
		}
		if mult == 0 {
			mult = 3
		}
		p.Bfd = &api.BfdPeerConfig{
			Enabled:                  bfd,
			DesiredMinimumTxInterval: uint32(tx.Microseconds()),
			RequiredMinimumReceive:   uint32(rx.Microseconds()),
			DetectionMultiplier:      uint32(mult),
		}
	}
	return p
}

// reconcile sends GoBGP the difference between the desired and the advertised set.
func (s *Speaker) reconcile(srv *server.BgpServer) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	want := s.desired
	s.mu.Unlock()

	var del []*apiutil.Path
	var gone []netip.Prefix
	for p, a := range s.advertised {
		if _, ok := want[p]; ok {
			continue
		}
		path, err := s.toPath(a, true)
		if err != nil { // cannot happen: it was advertised, so it converted before
			return err
		}
		del = append(del, path)
		gone = append(gone, p)
	}
	var add []*apiutil.Path
	var added []Announcement
	invalid := map[netip.Prefix]string{}
	for p, a := range want {
		if old, ok := s.advertised[p]; ok && old.Equal(a) && !s.resync {
			continue
		}
		path, err := s.toPath(a, false)
		if err != nil {
			invalid[p] = err.Error()
			if _, ok := s.advertised[p]; ok { // attributes turned invalid: withdraw
				if wp, err := s.toPath(s.advertised[p], true); err == nil {
					del = append(del, wp)
					gone = append(gone, p)
				}
			}
			continue
		}
		add = append(add, path)
		added = append(added, a)
	}
	for p, msg := range invalid {
		if s.invalid[p] != msg {
			s.log.Error("bgp: announcement skipped", "prefix", p, "err", msg)
		}
	}
	s.invalid = invalid

	if len(del) > 0 {
		if err := srv.DeletePath(apiutil.DeletePathRequest{Paths: del}); err != nil {
			return fmt.Errorf("withdraw %d prefixes: %w", len(del), err)
		}
		for _, p := range gone {
			delete(s.advertised, p)
		}
	}
	if len(add) > 0 {
		// Recorded before the call: on an error some paths may be in GoBGP already, so
		// they must be withdrawn if they leave the desired set; resync re-adds them all.
		for _, a := range added {
			s.advertised[a.Prefix] = a
		}
		if _, err := srv.AddPath(apiutil.AddPathRequest{Paths: add}); err != nil {
			s.resync = true
			s.m.announced.Set(float64(len(s.advertised)))
			return fmt.Errorf("advertise %d prefixes: %w", len(add), err)
		}
	}
	s.resync = false
	s.m.announced.Set(float64(len(s.advertised)))
	if len(add)+len(del) > 0 {
		s.log.Debug("bgp: announcements updated", "advertised", len(add), "withdrawn", len(del), "total", len(s.advertised))
	}
	return nil
}

// toPath converts an announcement into a GoBGP path: ORIGIN IGP, AS_PATH, NEXT_HOP
// (IPv4) or MP_REACH_NLRI (IPv6), MED (always present, as PyBal), COMMUNITIES.
func (s *Speaker) toPath(a Announcement, withdraw bool) (*apiutil.Path, error) {
	p := a.Prefix
	if !p.IsValid() || p.Bits() != p.Addr().BitLen() {
		return nil, fmt.Errorf("prefix %s is not a host route (/32 or /128)", p)
	}
	fam := bgp.RF_IPv4_UC
	if p.Addr().Is6() {
		fam = bgp.RF_IPv6_UC
	}
	nh := a.NextHop.Unmap()
	switch {
	case !nh.IsValid() && fam == bgp.RF_IPv4_UC:
		return nil, errors.New("no next hop: set bgp-nexthop-ipv4")
	case !nh.IsValid():
		return nil, errors.New("no next hop: set bgp-nexthop-ipv6")
	case nh.Is4() != (fam == bgp.RF_IPv4_UC):
		return nil, fmt.Errorf("next hop %s is not of the prefix's address family", nh)
	}
	nlri, err := bgp.NewIPAddrPrefix(p)
	if err != nil {
		return nil, err
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	// GoBGP prepends the local AS itself on eBGP sessions; PyBal sends bgp-as-path
	// verbatim (it starts with the local AS by default), so drop one leading local AS.
	asPath := a.ASPath
	if len(asPath) > 0 && asPath[0] == s.g.BGPLocalASN {
		asPath = asPath[1:]
	}
	segs := []bgp.AsPathParamInterface{}
	if len(asPath) > 0 {
		segs = append(segs, bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, slices.Clone(asPath)))
	}
	attrs = append(attrs, bgp.NewPathAttributeAsPath(segs))
	if fam == bgp.RF_IPv4_UC {
		a, err := bgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	} else {
		a, err := bgp.NewPathAttributeMpReachNLRI(fam, []bgp.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	}
	attrs = append(attrs, bgp.NewPathAttributeMultiExitDisc(a.MED))
	if len(a.Communities) > 0 {
		cs := make([]uint32, 0, len(a.Communities))
		for _, c := range a.Communities {
			v, err := ParseCommunity(c)
			if err != nil {
				return nil, err
			}
			cs = append(cs, v)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(cs))
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs, Withdrawal: withdraw}, nil
}

// Shutdown withdraws every route, sends a Cease (administrative shutdown) to every
// peer and stops GoBGP, bounded by ctx. Later calls return the first result; Set is
// ignored afterwards.
func (s *Speaker) Shutdown(ctx context.Context) error { return s.halt(ctx, false, "bgp shutdown") }

// Detach stops the speaker for a planned restart without withdrawing: with
// bgp-graceful-restart the sessions are closed without a NOTIFICATION, so routers
// keep the routes (stale) until the next kubal re-announces them. Without
// bgp-graceful-restart it is Shutdown.
func (s *Speaker) Detach(ctx context.Context) error {
	if !s.g.BGPGracefulRestart {
		return s.Shutdown(ctx)
	}
	return s.halt(ctx, true, "bgp detach")
}

// halt stops the speaker once (gracefully or with a withdraw and Cease), bounded by ctx.
func (s *Speaker) halt(ctx context.Context, graceful bool, what string) error {
	s.shutdownOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		srv := s.srv
		s.mu.Unlock()
		done := make(chan error, 1)
		go func() { done <- s.stop(srv, graceful) }()
		select {
		case s.shutdownErr = <-done:
		case <-ctx.Done():
			s.shutdownErr = fmt.Errorf("%s: %w", what, ctx.Err())
		}
		close(s.shutdownDone)
	})
	<-s.shutdownDone
	return s.shutdownErr
}

func (s *Speaker) stop(srv *server.BgpServer, graceful bool) error {
	if srv == nil {
		return nil
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	var errs []error
	if !graceful {
		sent := updatesSent(context.Background(), srv)
		if err := srv.DeletePath(apiutil.DeletePathRequest{DeleteAll: true}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw all: %w", err))
		} else if left := awaitWithdrawSent(context.Background(), srv, sent); len(left) > 0 {
			s.log.Warn("bgp: withdraw not written before the Cease; those routers flush the routes as a dropped session",
				"peers", left, "waited", withdrawFlushWait)
		}
		for _, p := range s.peers {
			if err := srv.ShutdownPeer(context.Background(), &api.ShutdownPeerRequest{
				Address: p.String(), Communication: "kubal shutting down"}); err != nil {
				errs = append(errs, fmt.Errorf("cease to %s: %w", p, err))
			}
		}
	}
	if graceful {
		// Close the sessions without a NOTIFICATION; Stop below then only stops BFD
		// (its second StopBgp fails harmlessly).
		if err := srv.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: true}); err != nil {
			errs = append(errs, fmt.Errorf("stop GoBGP: %w", err))
		} else {
			s.bgpStopped.Store(true)
		}
	}
	srv.Stop() // sessions (Cease, peer de-configured), listeners, BFD
	clear(s.advertised)
	s.m.announced.Set(0)
	for _, p := range s.peers {
		s.m.setSession(p, func(si *sessionInfo) { si.state = bgp.BGP_FSM_IDLE })
		if s.g.BGPBFD {
			s.m.bfdUp.WithLabelValues(p.String()).Set(0)
		}
	}
	s.log.Info("bgp: speaker stopped", "withdrawn", !graceful)
	return errors.Join(errs...)
}

// minLevel drops records below min before they reach the daemon's handler, and
// GoBGP's "failed to stop BGP server" once kubal has stopped BGP itself (Detach).
type minLevel struct {
	h       slog.Handler
	min     slog.Level
	stopped *atomic.Bool
}

// gobgpStopFailed is GoBGP's message when Stop finds BGP already stopped.
const gobgpStopFailed = "failed to stop BGP server"

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}
func (m minLevel) Handle(ctx context.Context, r slog.Record) error {
	if m.stopped != nil && m.stopped.Load() && r.Message == gobgpStopFailed {
		return nil
	}
	return m.h.Handle(ctx, r)
}
func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{m.h.WithAttrs(as), m.min, m.stopped}
}
func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{m.h.WithGroup(name), m.min, m.stopped}
}
