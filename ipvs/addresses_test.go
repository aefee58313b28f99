package ipvs

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
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
	waitFor(t, func() bool { return len(f.Get("lo")) == 1 })
	cancel()
	<-done
}
