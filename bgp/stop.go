package bgp

import (
	"context"
	"log/slog"
	"time"
)

// Stop ends the BGP sessions within 2 s: with graceful (a planned restart and
// bgp-graceful-restart) they close without a withdraw, so routers keep forwarding to
// this host until the restarted kubal re-announces; otherwise the routes are withdrawn
// so routers move to the backup LVS. IPVS is left as it is either way. A nil Speaker
// (BGP off) only logs the stop.
func (s *Speaker) Stop(graceful bool, log *slog.Logger) error {
	if s == nil {
		log.Info("shutting down, leaving IPVS in place")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if graceful {
		log.Info("planned restart: closing BGP sessions gracefully (routes kept by the routers), leaving IPVS in place")
		return s.Detach(ctx)
	}
	log.Info("shutting down: withdrawing BGP routes, leaving IPVS in place")
	return s.Shutdown(ctx)
}
