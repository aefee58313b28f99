package bgp

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are PyBal's BGP gauges (same names and labels) plus kubal's.
type metrics struct {
	asn         string
	enabled     prometheus.Gauge
	established *prometheus.GaugeVec // local_asn, peer
	stateCount  *prometheus.GaugeVec // local_asn, state, local_ip, remote_ip, side
	announced   prometheus.Gauge
	bfdUp       *prometheus.GaugeVec // peer; only exported when bgp-bfd = yes
	bfdOn       prometheus.Gauge

	mu       sync.Mutex
	sessions map[netip.Addr]sessionInfo
}

type sessionInfo struct {
	state      bgp.FSMState
	local      netip.Addr
	remotePort uint32
}

// PyBal's state names (bgp/fsm.py).
var stateNames = map[bgp.FSMState]string{
	bgp.BGP_FSM_IDLE:        "IDLE",
	bgp.BGP_FSM_CONNECT:     "CONNECT",
	bgp.BGP_FSM_ACTIVE:      "ACTIVE",
	bgp.BGP_FSM_OPENSENT:    "OPENSENT",
	bgp.BGP_FSM_OPENCONFIRM: "OPENCONFIRM",
	bgp.BGP_FSM_ESTABLISHED: "ESTABLISHED",
}

func newMetrics(reg prometheus.Registerer, asn uint32) (*metrics, error) {
	m := &metrics{asn: strconv.FormatUint(uint64(asn), 10), sessions: map[netip.Addr]sessionInfo{}}
	var err error
	if m.enabled, err = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pybal_bgp_enabled", Help: "BGP enabled"})); err != nil {
		return nil, err
	}
	if m.established, err = register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pybal_bgp_session_established", Help: "BGP session established"},
		[]string{"local_asn", "peer"})); err != nil {
		return nil, err
	}
	if m.stateCount, err = register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pybal_bgp_session_state_count", Help: "Number of BGP sessions in each FSM state"},
		[]string{"local_asn", "state", "local_ip", "remote_ip", "side"})); err != nil {
		return nil, err
	}
	if m.announced, err = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kubal_bgp_announced_prefixes", Help: "Prefixes this host advertises to its BGP peers"})); err != nil {
		return nil, err
	}
	if m.bfdUp, err = register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kubal_bgp_bfd_up", Help: "BFD session with the peer is up (1) or not (0); absent when bgp-bfd is off"},
		[]string{"peer"})); err != nil {
		return nil, err
	}
	if m.bfdOn, err = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kubal_bgp_bfd_configured", Help: "BFD is configured (bgp = yes and bgp-bfd = yes)"})); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or reuses the collector already registered under the same
// name (a new Speaker after a config reload). A nil reg registers nothing.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// setSession updates what is known of the session with peer and re-renders the
// session gauges.
func (m *metrics) setSession(peer netip.Addr, update func(*sessionInfo)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := m.sessions[peer]
	update(&in)
	m.sessions[peer] = in
	est := 0.0
	if in.state == bgp.BGP_FSM_ESTABLISHED {
		est = 1
	}
	m.established.WithLabelValues(m.asn, peer.String()).Set(est)

	m.stateCount.Reset()
	peers := slices.SortedFunc(func(yield func(netip.Addr) bool) {
		for p := range m.sessions {
			if !yield(p) {
				return
			}
		}
	}, netip.Addr.Compare)
	for _, p := range peers {
		s := m.sessions[p]
		local := ""
		if s.local.IsValid() && s.state == bgp.BGP_FSM_ESTABLISHED {
			local = s.local.String()
		}
		// The active side connected to the peer's port 179; otherwise the peer
		// connected to our listener.
		side := "active"
		if s.remotePort != 0 && s.remotePort != bgp.BGP_PORT && s.state == bgp.BGP_FSM_ESTABLISHED {
			side = "passive"
		}
		m.stateCount.WithLabelValues(m.asn, stateNames[s.state], local, p.String(), side).Inc()
	}
}

// onPeerEvent records GoBGP's peer state changes as they happen.
func (s *Speaker) onPeerEvent(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
	if ev == nil || ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	peer := st.NeighborAddress.Unmap()
	if !peer.IsValid() {
		return
	}
	s.m.mu.Lock()
	old := s.m.sessions[peer].state
	s.m.mu.Unlock()
	s.m.setSession(peer, func(si *sessionInfo) {
		si.state, si.remotePort = st.SessionState, ev.Peer.Transport.RemotePort
	})
	if st.SessionState == bgp.BGP_FSM_ESTABLISHED {
		select { // the local address is only in ListPeer: poll now
		case s.pollNow <- struct{}{}:
		default:
		}
	}
	s.noteBFDEvent(peer, st.SessionState)
	switch {
	case st.SessionState == bgp.BGP_FSM_ESTABLISHED && old != bgp.BGP_FSM_ESTABLISHED:
		s.log.Info("bgp: session established", "peer", peer, "peer_asn", st.PeerASN, "local", ev.Peer.Transport.LocalAddress)
	case st.SessionState != bgp.BGP_FSM_ESTABLISHED && old == bgp.BGP_FSM_ESTABLISHED:
		s.log.Warn("bgp: session down", "peer", peer, "state", stateNames[st.SessionState], "reason", st.DisconnectMessage)
	}
}

// poll reads peer and BFD state back from GoBGP (BFD has no event stream).
func (s *Speaker) poll(ctx context.Context, srv *server.BgpServer) {
	type row struct {
		peer  netip.Addr
		local netip.Addr
		state bgp.FSMState
		bfdUp bool
	}
	var rows []row
	err := srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if p.GetState() == nil {
			return
		}
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		st := p.GetState().GetSessionState()
		if st == api.PeerState_SESSION_STATE_UNSPECIFIED {
			st = api.PeerState_SESSION_STATE_IDLE
		}
		local, _ := netip.ParseAddr(p.GetTransport().GetLocalAddress())
		rows = append(rows, row{
			peer:  addr.Unmap(),
			local: local.Unmap(),
			state: bgp.FSMState(st - api.PeerState_SESSION_STATE_IDLE),
			bfdUp: p.GetState().GetBfdState().GetSessionState() == api.BfdSessionState_BFD_SESSION_STATE_UP,
		})
	})
	if err != nil {
		s.log.Debug("bgp: listing peers failed", "err", err)
		return
	}
	for _, r := range rows {
		s.m.setSession(r.peer, func(si *sessionInfo) {
			si.state = r.state
			if r.local.IsValid() && !r.local.IsUnspecified() {
				si.local = r.local
			}
		})
		// Without BFD there is no BFD session to be down: export nothing, or an alert
		// on kubal_bgp_bfd_up == 0 fires on every host that never enabled it.
		if s.g.BGPBFD {
			v := 0.0
			if r.bfdUp {
				v = 1
			}
			s.m.bfdUp.WithLabelValues(r.peer.String()).Set(v)
		}
	}
}
