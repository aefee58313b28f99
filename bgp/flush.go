package bgp

import (
	"context"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Shutdown must put the withdraw on the wire before the Cease. GoBGP queues the
// withdraw UPDATE for each peer's send loop, but ShutdownPeer writes its NOTIFICATION
// straight to the connection: without waiting, a router can see the Cease first and
// flush the routes as a dropped session instead (seen once in the systemd rig's CI run,
// where BIRD logged "Received: Administrative shutdown" before the removal).
const (
	// withdrawFlushWait bounds the wait for the withdraw to be written: a stop is
	// never held up longer by a peer that does not drain its socket.
	withdrawFlushWait = time.Second
	// withdrawQuiet is how long a peer's UPDATE count must stay unchanged after it
	// moved: a large withdraw is several UPDATEs, written back to back.
	withdrawQuiet = 20 * time.Millisecond
	flushPoll     = 2 * time.Millisecond
)

// updatesSent returns, for each Established peer that is sent at least one route, how
// many UPDATE messages GoBGP has written to it so far (counted after each write).
func updatesSent(ctx context.Context, srv *server.BgpServer) map[string]uint64 {
	out := map[string]uint64{}
	_ = srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if p.GetState().GetSessionState() != api.PeerState_SESSION_STATE_ESTABLISHED {
			return
		}
		var n uint64
		for _, af := range p.GetAfiSafis() {
			n += af.GetState().GetAdvertised()
		}
		if n > 0 {
			out[p.GetConf().GetNeighborAddress()] = p.GetState().GetMessages().GetSent().GetUpdate()
		}
	})
	return out
}

// awaitWithdrawSent waits until every peer in before has been written at least one more
// UPDATE and its count has then been quiet for withdrawQuiet, or the peer left
// Established, or withdrawFlushWait passed. It reports the peers still pending.
func awaitWithdrawSent(ctx context.Context, srv *server.BgpServer, before map[string]uint64) []string {
	ctx, cancel := context.WithTimeout(ctx, withdrawFlushWait)
	defer cancel()
	type progress struct {
		last    uint64
		changed time.Time // when last moved past the count before the withdraw
	}
	pending := map[string]*progress{}
	for p, n := range before {
		pending[p] = &progress{last: n}
	}
	for len(pending) > 0 {
		now := time.Now()
		seen := map[string]bool{}
		_ = srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			addr := p.GetConf().GetNeighborAddress()
			pr, ok := pending[addr]
			if !ok || p.GetState().GetSessionState() != api.PeerState_SESSION_STATE_ESTABLISHED {
				return
			}
			seen[addr] = true
			if n := p.GetState().GetMessages().GetSent().GetUpdate(); n != pr.last {
				pr.last, pr.changed = n, now
			}
		})
		for addr, pr := range pending {
			// A peer gone from Established has nothing left to receive.
			if !seen[addr] || (!pr.changed.IsZero() && now.Sub(pr.changed) >= withdrawQuiet) {
				delete(pending, addr)
			}
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			var left []string
			for addr := range pending {
				left = append(left, addr)
			}
			return left
		case <-time.After(flushPoll):
		}
	}
	return nil
}
