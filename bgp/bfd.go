package bgp

import (
	"context"
	"net/netip"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// BFD lifecycle. GoBGP's BFD session for a peer lives as long as the peer's config, but
// BFD only means something while the BGP session is Established, and keeping it across
// a BGP reset breaks in two ways in GoBGP v4.8.0 (pkg/server/bfd_peer.go, fsm.go):
//
//  1. Routers create their BFD session for a BGP session (BIRD: `bfd on;` with no
//     `neighbor` in `protocol bfd`) and drop it when BGP goes down; the next one has a
//     new discriminator. GoBGP's session stays Up, bound to the old remote
//     discriminator, and drops the new session's Down packets (rxPacket: "a packet
//     that omits Your Discriminator still has to come from that same remote system",
//     contrary to RFC 5880 6.8.6, which selects such a session by address), so it
//     expires.
//  2. The expiry calls ResetPeer, which queues a Cease (administrative reset) on the
//     peer. Only the Established state reads that queue, so with BGP down the Cease
//     waits and kills the NEXT session the moment it is established (and GoBGP then
//     refuses connections for IdleHoldTimeAfterReset). The router drops its BFD
//     session again, and the loop repeats (the ECMP rig saw 15 resets in 30 s; with
//     BIRD's default `error wait time 60, 300` each costs a minute or more).
//
// So kubal runs a peer's BFD session only while its BGP session is Established: it
// enables BFD (UpdatePeer, BFD config only: the BGP session is untouched) once the
// session is Established and disables it as soon as the session leaves Established.
// Each session thus gets a fresh BFD session with no bound remote discriminator, and
// no BFD session is left to expire (and queue a Cease) while BGP is down. BFD comes up
// about 1 s after BGP (GoBGP opens its BFD socket on a 1 s tick), as before.

// noteBFDEvent records a BGP state change for the BFD lifecycle (from the GoBGP
// watcher: it must not call GoBGP, so Run does the work).
func (s *Speaker) noteBFDEvent(peer netip.Addr, st bgp.FSMState) {
	if !s.g.BGPBFD {
		return
	}
	if st != bgp.BGP_FSM_ESTABLISHED {
		s.bfdMu.Lock()
		s.bfdLeft[peer] = true
		s.bfdMu.Unlock()
	}
	select {
	case s.bfdKick <- struct{}{}:
	default:
	}
}

// syncBFD enables BFD on Established peers and disables it on peers that left
// Established since the last call (also when they are Established again by now: that
// is a new BGP session, which needs a new BFD session). Errors are logged; the next
// poll retries.
func (s *Speaker) syncBFD(ctx context.Context, srv *server.BgpServer) {
	if !s.g.BGPBFD || s.isClosing() {
		return
	}
	s.bfdMu.Lock()
	left := s.bfdLeft
	s.bfdLeft = map[netip.Addr]bool{}
	s.bfdMu.Unlock()
	for _, p := range s.peers {
		s.m.mu.Lock()
		est := s.m.sessions[p].state == bgp.BGP_FSM_ESTABLISHED
		s.m.mu.Unlock()
		if s.bfdActive[p] && (left[p] || !est) {
			if err := s.setBFD(ctx, srv, p, false); err != nil {
				s.log.Warn("bgp: cannot stop the BFD session of a peer whose BGP session went down, will retry", "peer", p, "err", err)
				s.bfdRetry(p)
				continue
			}
			s.log.Debug("bgp: BFD session stopped with its BGP session", "peer", p)
		}
		if !s.bfdActive[p] && est {
			if err := s.setBFD(ctx, srv, p, true); err != nil {
				s.log.Warn("bgp: cannot start the BFD session of an established peer, will retry", "peer", p, "err", err)
				continue
			}
			s.log.Debug("bgp: BFD session started for the established BGP session", "peer", p)
		}
	}
}

// bfdRetry keeps p marked as having left Established, so a failed disable is retried
// even if the session is back by then.
func (s *Speaker) bfdRetry(p netip.Addr) {
	s.bfdMu.Lock()
	s.bfdLeft[p] = true
	s.bfdMu.Unlock()
}

func (s *Speaker) setBFD(ctx context.Context, srv *server.BgpServer, p netip.Addr, on bool) error {
	// The same config as AddPeer with only BFD's Enabled changed: GoBGP then only
	// deletes or adds the BFD session (updateNeighbor -> updateBfdPeer).
	if _, err := srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: s.peerConfig(p, on)}); err != nil {
		return err
	}
	s.bfdActive[p] = on
	return nil
}
