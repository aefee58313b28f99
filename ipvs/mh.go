package ipvs

import (
	"context"
	"fmt"
)

// The kernel's Maglev scheduler (ip_vs_mh.c) builds its lookup table by walking the
// service's destination list in order, each destination in turn claiming its next
// preferred free slot (weighted by turns). When two destinations prefer the same slot,
// the one earlier in the list gets it: the table, and so the backend a flow goes to,
// depends on the order of the list, not only on the set of destinations. The list is
// in the order of history: an add puts the destination at the head (list_add), a delete
// leaves the others in place. The weight the table uses is last_weight, the last
// non-zero weight: an update to weight 0 keeps the old one (the destination keeps its
// slots and flows hashed to them find no destination unless mh-fallback is set), while a
// destination added at weight 0 has none.
//
// So two directors with the same destinations and weights can pick different backends
// for the same flow, after different histories. The Reconciler makes the table a
// function of the desired state only: for an mh service the list is kept in canonical
// order (ascending address and port, head first) and every weight-0 destination has
// last weight 0. canonicalize restores that after changes that break it, by deleting
// and re-adding the destinations before the longest canonical tail of the list, in one
// batch. A deleted destination that still has connections goes to the kernel's
// destination trash and the add takes the same one back (ip_vs_trash_get_dest), so its
// connections continue; only packets in the instant between the delete and the add are
// dropped (ip_vs_in drops packets of a connection whose destination is unavailable)
// and retransmitted.

// canonicalize makes service k's destination list canonical (see above).
func (r *Reconciler) canonicalize(ctx context.Context, k ServiceKey, cur *kernelService) error {
	if !cur.ordered || len(cur.order) != len(cur.dests) {
		// The order is not kept (the scheduler just became mh): read it.
		ds, err := r.b.Destinations(ctx, k)
		if err != nil {
			r.m.errors.WithLabelValues(OpDumpDestinations).Inc()
			return fmt.Errorf("read the destination order of %s: %w", k, err)
		}
		cur.order = cur.order[:0]
		for _, d := range ds {
			dk := keyOf(k, normalizeDest(k, d))
			if _, ok := cur.dests[dk]; !ok {
				return fmt.Errorf("destination %s of %s changed outside kubal; re-reading", dk.Addr, k)
			}
			cur.order = append(cur.order, dk)
		}
		cur.ordered = true
		if len(cur.order) != len(cur.dests) {
			return fmt.Errorf("destinations of %s changed outside kubal; re-reading", k)
		}
	}
	want := sortedDestKeys(cur.dests)
	n := len(want)
	tail := 0
	for tail < n && cur.order[n-1-tail] == want[n-1-tail] && !cur.stale[want[n-1-tail]] {
		tail++
	}
	if tail == n {
		cur.canonical = true
		return nil
	}
	rebuild := want[:n-tail]
	r.m.mhRebuilds.Add(float64(len(rebuild)))
	r.log.Info("ipvs: re-adding mh destinations in canonical order", "service", k.String(),
		"destinations", len(rebuild), "of", n)
	var errs errList
	// Last first: each add goes to the head, so the first ends at the head.
	for i := len(rebuild) - 1; i >= 0; i-- {
		dk := rebuild[i]
		d := cur.dests[dk]
		add := d
		add.ActiveConns, add.InactiveConns = 0, 0
		errs.add(r.enqueue(ctx, change{kind: OpDeleteDestination, k: k, d: d}, func() { cur.delDest(dk) }))
		errs.add(r.enqueue(ctx, change{kind: OpAddDestination, k: k, d: add}, func() { cur.addDest(dk, d) }))
	}
	errs.add(r.flush(ctx))
	if errs.err() != nil {
		return errs.err()
	}
	cur.canonical = true
	return nil
}
