package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/internal/testutil"
)

// hasBFD reports whether GoBGP runs a BFD session with peer.
func hasBFD(srv *server.BgpServer, peer netip.Addr) bool {
	found := false
	srv.ListBfdPeer(context.Background(), func(addr string, _ *api.BfdPeerState) {
		found = found || addr == peer.String()
	})
	return found
}

// count returns how many records with message msg were logged.
func (r recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range *r.recs {
		if rec.Message == msg {
			n++
		}
	}
	return n
}

// A peer's BFD session exists only while its BGP session is Established, and a new
// BGP session (even one that came back before kubal looked) gets a new BFD session.
// The BGP side is driven by hand; integration/bgp checks it against BIRD.
func TestSyncBFDFollowsTheBGPSession(t *testing.T) {
	g := validGlobal()
	g.BGPLocalPort = testutil.FreePort(t)
	g.BGPBFD = true
	peer := netip.MustParseAddr("192.0.2.1") // TEST-NET: never answers
	g.BGPPeerAddresses = []netip.Addr{peer}
	rec := newRecorder() // at debug level, so GoBGP's BFD peer log lines are kept
	s, err := New(g, slog.New(rec), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	srv, err := s.startOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	set := func(st bgp.FSMState) {
		s.m.setSession(peer, func(si *sessionInfo) { si.state = st })
		s.noteBFDEvent(peer, st)
	}
	for _, step := range []struct {
		name     string
		states   []bgp.FSMState // BGP transitions seen before syncBFD runs
		exists   bool           // a BFD session must run afterwards
		sessions int            // BFD sessions GoBGP created so far
	}{
		{"configured, BGP Idle", nil, false, 0},
		{"BGP connecting", []bgp.FSMState{bgp.BGP_FSM_ACTIVE, bgp.BGP_FSM_OPENSENT}, false, 0},
		{"BGP Established", []bgp.FSMState{bgp.BGP_FSM_OPENCONFIRM, bgp.BGP_FSM_ESTABLISHED}, true, 1},
		{"still Established: no churn", nil, true, 1},
		{"BGP down", []bgp.FSMState{bgp.BGP_FSM_IDLE}, false, 1},
		{"BGP back", []bgp.FSMState{bgp.BGP_FSM_ACTIVE, bgp.BGP_FSM_ESTABLISHED}, true, 2},
		{"BGP bounced between two syncs", []bgp.FSMState{bgp.BGP_FSM_IDLE, bgp.BGP_FSM_ESTABLISHED}, true, 3},
	} {
		for _, st := range step.states {
			set(st)
		}
		s.syncBFD(ctx, srv)
		// GoBGP's BFD server applies changes asynchronously.
		if _, ok := testutil.Poll(2*time.Second, time.Millisecond, func() bool {
			return hasBFD(srv, peer) == step.exists && rec.count("Insert BFD peer") == step.sessions &&
				rec.count("Remove BFD peer") == step.sessions-b2i(step.exists)
		}); !ok {
			t.Fatalf("%s: BFD session running = %v, created %d, removed %d; want %v, %d, %d", step.name,
				hasBFD(srv, peer), rec.count("Insert BFD peer"), rec.count("Remove BFD peer"),
				step.exists, step.sessions, step.sessions-b2i(step.exists))
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
