package ipvs

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kubal/kubal/internal/testutil"
)

func TestAddresses(t *testing.T) {
	ctx := context.Background()
	var out bytes.Buffer
	f := NewDryRunAddrs(&out)
	foreign := netip.MustParsePrefix("192.168.1.10/24")
	must(t, f.Add(ctx, "eth0", foreign))
	adopted := netip.MustParsePrefix("10.0.0.9/32")
	must(t, f.Add(ctx, "lo", adopted)) // a VIP left by the previous kubal
	out.Reset()

	a := NewAddressesWith(f, testLog(t))
	v4, v6 := VIP{Addr: netip.MustParseAddr("10.0.0.1")}, VIP{Addr: netip.MustParseAddr("2001:db8::1"), Interface: "eth0"}
	a.Set([]VIP{v4, v6, {Addr: adopted.Addr()}})
	must(t, a.Pass(ctx))
	if got, want := f.Get("lo"), []netip.Prefix{adopted, netip.MustParsePrefix("10.0.0.1/32")}; !slices.Equal(got, want) {
		t.Errorf("lo: %v, want %v", got, want)
	}
	if got, want := f.Get("eth0"), []netip.Prefix{foreign, netip.MustParsePrefix("2001:db8::1/128")}; !slices.Equal(got, want) {
		t.Errorf("eth0: %v, want %v", got, want)
	}
	if got, want := out.String(), "ip address add 2001:db8::1/128 dev eth0\nip address add 10.0.0.1/32 dev lo\n"; got != want {
		t.Errorf("dry run lines %q, want %q", got, want)
	}
	// Drift: removed by hand, restored by the next pass.
	must(t, f.Delete(ctx, "lo", netip.MustParsePrefix("10.0.0.1/32")))
	must(t, a.Pass(ctx))
	if !slices.Contains(f.Get("lo"), netip.MustParsePrefix("10.0.0.1/32")) {
		t.Error("drift not repaired")
	}
	// Removed from the config: owned ones go (adopted ones included), foreign stay.
	a.Set([]VIP{v4})
	must(t, a.Pass(ctx))
	if got, want := f.Get("lo"), []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}; !slices.Equal(got, want) {
		t.Errorf("lo after removal: %v, want %v", got, want)
	}
	if got, want := f.Get("eth0"), []netip.Prefix{foreign}; !slices.Equal(got, want) {
		t.Errorf("eth0 after removal: %v, want %v", got, want)
	}
}

func TestAddressesRunRetries(t *testing.T) {
	f := NewFakeAddrs()
	f.SetFailure(errors.New("ENOBUFS"))
	a := NewAddressesWith(f, testLog(t))
	a.MinInterval = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	a.Set([]VIP{{Addr: netip.MustParseAddr("10.0.0.1")}})
	time.Sleep(50 * time.Millisecond)
	f.SetFailure(nil)
	testutil.Eventually(t, 5*time.Second, "condition", func() bool { return len(f.Get("lo")) == 1 })
	cancel()
	<-done
}

// Run on a fake clock: the first pass at once, drift repaired at the resync, errors
// retried with backoff.
func TestAddressesRun(t *testing.T) {
	ctx := context.Background()
	f := NewFakeAddrs()
	a := NewAddressesWith(f, testLog(t))
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	a.Clock = clk
	vip := netip.MustParsePrefix("10.0.0.1/32")
	a.Set([]VIP{{Addr: vip.Addr()}})
	h := startLoop(t, clk, a.kick, &a.idle, a.Run)
	due := h.settle()
	if !slices.Equal(f.Get("lo"), []netip.Prefix{vip}) {
		t.Fatalf("lo: %v after the first pass", f.Get("lo"))
	}
	// The kick of Set is still pending (it came before the first pass): one more pass
	// MinInterval later, then the resync.
	if want := clk.Now().Add(a.MinInterval); !due.Equal(want) {
		t.Errorf("next pass at %v, want %v", due, want)
	}
	at := h.advance(due)
	if want := due.Add(a.ResyncPeriod); !at.Equal(want) {
		t.Errorf("next pass at %v, want the resync at %v", at, want)
	}
	due = at
	must(t, f.Delete(ctx, "lo", vip)) // by hand
	f.SetFailure(errors.New("netlink: EBUSY"))
	at = due
	due = h.advance(due)
	if due.Sub(at) != a.MinInterval {
		t.Errorf("retry after %v, want %v", due.Sub(at), a.MinInterval)
	}
	f.SetFailure(nil)
	h.advance(due)
	if !slices.Equal(f.Get("lo"), []netip.Prefix{vip}) {
		t.Errorf("lo: %v; drift not repaired after the backend recovered", f.Get("lo"))
	}
}
