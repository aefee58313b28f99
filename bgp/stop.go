package bgp

import (
	"context"
	"log/slog"
)

// Stop ends the BGP sessions: with graceful (a planned restart and
// bgp-graceful-restart) they close without a withdraw, so routers keep forwarding to
// this host until the restarted kubal re-announces; otherwise the routes are withdrawn
// so routers move to the backup LVS. IPVS is left as it is either way.
func (s *Speaker) Stop(ctx context.Context, graceful bool, log *slog.Logger) error {
	if graceful {
		log.Info("planned restart: closing BGP sessions gracefully (routes kept by the routers), leaving IPVS in place")
		return s.Detach(ctx)
	}
	log.Info("shutting down: withdrawing BGP routes, leaving IPVS in place")
	return s.Shutdown(ctx)
}
