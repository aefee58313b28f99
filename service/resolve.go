package service

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// LookupHost resolves host to one address of the VIP's family, preferring the first
// answer (PyBal picked at random; a stable choice avoids needless IPVS churn).
func LookupHost(ctx context.Context, host string, v6 bool) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		if is6 := a.Is6() && !a.Is4In6(); is6 != v6 {
			return netip.Addr{}, fmt.Errorf("%s is not of the VIP's address family", host)
		}
		return a, nil
	}
	network := "ip4"
	if v6 {
		network = "ip6"
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("no %s address for %s", network, host)
	}
	return addrs[0].Unmap(), nil
}

// Bounded limits r to n concurrent lookups (100k unresolvable names must not mean 100k
// lookups at once); the others wait their turn.
func Bounded(r Resolver, n int) Resolver {
	sem := make(chan struct{}, n)
	return func(ctx context.Context, host string, v6 bool) (netip.Addr, error) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return netip.Addr{}, ctx.Err()
		}
		defer func() { <-sem }()
		return r(ctx, host, v6)
	}
}
