package ipvs

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Issue 18: two directors with the same mh destinations and weights must build the
// same Maglev table, whatever their history. The Fake keeps the kernel's list order
// (newest first) and last weights; MHInput is what the kernel builds the table from.
func TestMHTableIndependentOfHistory(t *testing.T) {
	ctx := context.Background()
	k := web
	svc := Service{ServiceKey: k, Scheduler: "mh", Flags: []string{"mh-port"}}
	pool := func(ws map[string]int) Pool {
		p := Pool{Service: svc}
		for _, a := range slices.Sorted(func(yield func(string) bool) {
			for a := range ws {
				if !yield(a) {
					return
				}
			}
		}) {
			p.Destinations = append(p.Destinations, dest(a, 0, ws[a]))
		}
		return p
	}
	final := map[string]int{"10.0.1.1": 1, "10.0.1.2": 2, "10.0.1.3": 1, "10.0.1.4": 0}

	// Director 1 starts with the final state.
	f1 := NewFake()
	r1, _, _ := newTestReconciler(t, f1)
	r1.Update(pool(final))
	mustPass(t, r1, false)
	if c := f1.Calls(); c[OpAddDestination] != 4 || c[OpDeleteDestination] != 0 {
		t.Errorf("a cold start issued %v; want 4 adds in canonical order, no rebuild", c)
	}

	// Director 2 has run for a while: servers added one by one, one removed and
	// re-added, one drained to weight 0, weights changed, a restart in the middle.
	f2 := NewFake()
	r2, _, _ := newTestReconciler(t, f2)
	history := []map[string]int{
		{"10.0.1.3": 1},
		{"10.0.1.3": 1, "10.0.1.1": 1},
		{"10.0.1.3": 1, "10.0.1.1": 1, "10.0.1.4": 3},
		{"10.0.1.3": 1, "10.0.1.1": 1, "10.0.1.4": 3, "10.0.1.2": 5},
		{"10.0.1.3": 1, "10.0.1.4": 3, "10.0.1.2": 5},
		{"10.0.1.3": 1, "10.0.1.4": 3, "10.0.1.2": 5, "10.0.1.1": 1},
		{"10.0.1.3": 1, "10.0.1.4": 0, "10.0.1.2": 5, "10.0.1.1": 1},
	}
	for _, ws := range history {
		r2.Update(pool(ws))
		mustPass(t, r2, false)
	}
	// Restart: a new process adopts the kernel's state, then reaches the final one.
	r2, _, _ = newTestReconciler(t, f2)
	r2.Update(pool(history[len(history)-1]))
	mustPass(t, r2, false)
	r2.Update(pool(final))
	mustPass(t, r2, false)

	got1, got2 := f1.MHInput(k), f2.MHInput(k)
	if !slices.Equal(got1, got2) {
		t.Fatalf("same destinations, different mh tables:\ndirector 1: %s\ndirector 2: %s", strings.Join(got1, ", "), strings.Join(got2, ", "))
	}
	want := []string{"10.0.1.1:80 last_weight=1", "10.0.1.2:80 last_weight=2", "10.0.1.3:80 last_weight=1", "10.0.1.4:80 last_weight=0"}
	if !slices.Equal(got1, want) {
		t.Errorf("mh input %v, want the canonical %v", got1, want)
	}
	// Converged: nothing to do on a full resync.
	f2.ResetCalls()
	mustPass(t, r2, true)
	if c := f2.Calls(); c[OpAddDestination]+c[OpDeleteDestination]+c[OpUpdateDestination] != 0 {
		t.Errorf("a resync of a canonical service issued %v", c)
	}
	_ = ctx
}

// A random walk of histories (adds, removals, weight changes including to and from 0,
// drains, restarts, changes by hand) always ends with the table a fresh director
// builds from the final state.
func TestMHRandomHistories(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 18))
	svc := Service{ServiceKey: web, Scheduler: "mh"}
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 4, byte(i + 1)}) }
	for run := range 40 {
		f := NewFake()
		r, _, _ := newTestReconciler(t, f)
		ws := map[int]int{}
		drain := rng.IntN(2) == 0
		var p Pool
		for range 30 {
			switch op := rng.IntN(10); {
			case op < 3:
				ws[rng.IntN(8)] = rng.IntN(4)
			case op < 5:
				delete(ws, rng.IntN(8))
			case op < 6:
				r, _, _ = newTestReconciler(t, f) // restart
			case op < 7:
				// By hand: someone sets a weight to 0 (the kernel keeps its last weight).
				for _, d := range f.Table()[web].Destinations {
					d.Weight = 0
					must(t, f.UpdateDestination(context.Background(), web, d))
					break
				}
				mustPass(t, r, true) // the resync sees it
			default:
				ws[rng.IntN(8)] = 1 + rng.IntN(3)
			}
			p = Pool{Service: svc, Drain: drain}
			for _, i := range slices.Sorted(func(yield func(int) bool) {
				for i := range ws {
					if !yield(i) {
						return
					}
				}
			}) {
				p.Destinations = append(p.Destinations, Destination{Addr: addr(i), Weight: ws[i]})
			}
			rng.Shuffle(len(p.Destinations), func(i, j int) { p.Destinations[i], p.Destinations[j] = p.Destinations[j], p.Destinations[i] })
			r.Update(p)
			mustPass(t, r, rng.IntN(4) == 0)
		}
		// Drained destinations are idle in the fake: one more pass removes them.
		mustPass(t, r, false)
		fresh := NewFake()
		rf, _, _ := newTestReconciler(t, fresh)
		rf.Update(p)
		mustPass(t, rf, false)
		if got, want := f.MHInput(web), fresh.MHInput(web); !slices.Equal(got, want) {
			t.Fatalf("run %d: after its history:\n%s\nfresh:\n%s", run, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}
