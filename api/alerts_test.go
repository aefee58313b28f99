package api

import (
	"encoding/json"
	"testing"

	"github.com/kubal/kubal/pool"
)

// unresolved is a server that never got an address (every host unresolvable or of the
// wrong family): not ready, not pooled.
func unresolved(host string) pool.ServerState {
	return pool.ServerState{Host: host, Weight: 10, Enabled: true, Up: true, Why: "no IPv4 address"}
}

// /alerts is not OK when a pool has servers but none pooled (before: "OK - All pools
// are healthy" while the VIP served nothing); an empty pool stays OK as in PyBal.
func TestAlertsNoPooledServer(t *testing.T) {
	tests := []struct {
		name string
		st   *fakeState
		want string
	}{
		{"every host unresolvable", newFakeState(pool.Snapshot{Name: "p", Threshold: 0.5,
			Servers: []pool.ServerState{unresolved("a"), unresolved("b")}}),
			"CRITICAL - p: no server is pooled (2 servers: 2 without an address (not resolved, or not of the VIP's family))"},
		{"all disabled or down", newFakeState(pool.Snapshot{Name: "p", Threshold: 0.5,
			Servers: []pool.ServerState{srv("a", "eUp", 10), srv("b", "Edp", 10), srv("c", "Edp", 10)}}),
			"CRITICAL - p: no server is pooled (3 servers: 1 disabled, 2 down)"},
		{"one pooled is fine", newFakeState(pool.Snapshot{Name: "p", Threshold: 0.5,
			Servers: []pool.ServerState{unresolved("a"), srv("b", "EUP", 10), srv("c", "EUP", 10)}}),
			"OK - All pools are healthy"},
		{"empty pool as PyBal", newFakeState(pool.Snapshot{Name: "p"}), "OK - All pools are healthy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := body(t, get(t, NewInstrumentation(tc.st, nil, discard()), "/alerts"))
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// /alerts keeps PyBal's one line (a critical hides the warnings); /v1/alerts lists
// every current problem.
func TestV1AlertsListsEveryProblem(t *testing.T) {
	st := newFakeState(
		pool.Snapshot{Name: "a", Threshold: 0.5, PooledDown: []string{"h1"}, Servers: []pool.ServerState{srv("h1", "EdP", 1), srv("h2", "EUP", 1), srv("h3", "EUP", 1)}},
		pool.Snapshot{Name: "b", Threshold: 0.9, Servers: []pool.ServerState{srv("x", "EUP", 1), srv("y", "EUP", 1)}},
		pool.Snapshot{Name: "c", Threshold: 0.5, Servers: []pool.ServerState{unresolved("z")}},
		pool.Snapshot{Name: "ok", Threshold: 0.5, Servers: []pool.ServerState{srv("x", "EUP", 1)}},
	)
	st.alerts = []Alert{{Level: LevelWarning, Msg: "config reload failed"}, {Level: LevelWarning, Pool: "b", Msg: "b: server-list source failing"}}
	h := NewInstrumentation(st, nil, discard())
	if got, want := body(t, get(t, h, "/alerts")), "CRITICAL - a: Servers h1 are marked down but pooled; c: no server is pooled (1 server: 1 without an address (not resolved, or not of the VIP's family))"; got != want {
		t.Fatalf("/alerts %q, want %q", got, want)
	}
	var v1 AlertsStatus
	if err := json.Unmarshal([]byte(body(t, get(t, h, "/v1/alerts"))), &v1); err != nil {
		t.Fatal(err)
	}
	want := []Alert{
		{Level: LevelCritical, Pool: "a", Msg: "a: Servers h1 are marked down but pooled"},
		{Level: LevelWarning, Pool: "b", Msg: "Pool b is too small to allow depooling."},
		{Level: LevelCritical, Pool: "c", Msg: "c: no server is pooled (1 server: 1 without an address (not resolved, or not of the VIP's family))"},
		{Level: LevelWarning, Msg: "config reload failed"},
		{Level: LevelWarning, Pool: "b", Msg: "b: server-list source failing"},
	}
	if v1.Status != LevelCritical || len(v1.Alerts) != len(want) {
		t.Fatalf("v1 %+v", v1)
	}
	for i := range want {
		if v1.Alerts[i] != want[i] {
			t.Errorf("alert %d: %+v, want %+v", i, v1.Alerts[i], want[i])
		}
	}
}

// A server without an address (and so, as in PyBal, without monitor instances) reads
// "partially up" in the text status, in /pools and in pool.ServerState.TextStatus alike.
func TestTextStatusWithoutAddress(t *testing.T) {
	st := newFakeState(pool.Snapshot{Name: "p", Servers: []pool.ServerState{
		{Host: "a", Weight: 10, Enabled: true},
		{Host: "b", Weight: 10},
		srv("c", "Edp", 10),
	}})
	h := NewInstrumentation(st, nil, discard())
	want := "a:\tenabled/partially up/not pooled\nb:\tdisabled/partially up/not pooled\nc:\tenabled/down/not pooled\n"
	if got := body(t, get(t, h, "/pools/p")); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	snap, _ := st.Snapshot("p")
	for i := range snap.Servers {
		if got, want := string(appendTextStatus(nil, &snap.Servers[i])), snap.Servers[i].TextStatus(); got != want {
			t.Errorf("%s: api %q, pool %q", snap.Servers[i].Host, got, want)
		}
	}
}
