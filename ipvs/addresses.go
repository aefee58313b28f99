package ipvs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// VIP is a service address the director must hold so that it accepts the VIP's
// traffic: Addr/32 (or /128) on Interface ("" = "lo", PyBal's setup; `vip-interface`).
type VIP struct {
	Addr      netip.Addr
	Interface string
}

func (v VIP) iface() string { return cmp.Or(v.Interface, "lo") }

func (v VIP) prefix() netip.Prefix { return netip.PrefixFrom(v.Addr, v.Addr.BitLen()) }

// AddrBackend manages interface addresses: netlink in a network namespace, or the
// in-memory FakeAddrs.
type AddrBackend interface {
	List(ctx context.Context, iface string) ([]netip.Prefix, error)
	Add(ctx context.Context, iface string, p netip.Prefix) error
	Delete(ctx context.Context, iface string, p netip.Prefix) error
}

// Addresses keeps the VIPs on the director, declaratively like the Reconciler: Set
// the full list, Run converges (coalesced, full relist every ResyncPeriod, backoff on
// errors). Only addresses that were desired in this process are ever removed; other
// addresses on the interfaces are left alone.
type Addresses struct {
	MinInterval  time.Duration // default 100ms
	ResyncPeriod time.Duration // default 5s
	MaxBackoff   time.Duration // default 30s
	Clock        clock.Clock   // timers and backoff (default the real clock)
	DryRun       bool          // log lines say what would have been done

	b   AddrBackend
	log *slog.Logger

	mu      sync.Mutex
	desired []VIP
	kick    chan struct{}
	idle    func(due time.Time) // tests: see loop.idle

	owned map[VIP]bool // Run goroutine only
}

// NewAddressesWith returns an Addresses over any backend (FakeAddrs in tests and
// dry runs).
func NewAddressesWith(b AddrBackend, log *slog.Logger) *Addresses {
	return &Addresses{
		MinInterval:  100 * time.Millisecond,
		ResyncPeriod: 5 * time.Second,
		MaxBackoff:   30 * time.Second,
		Clock:        clock.RealClock{},
		b:            b,
		log:          log,
		kick:         make(chan struct{}, 1),
		owned:        map[VIP]bool{},
	}
}

// Set replaces the desired VIPs. It never blocks.
func (a *Addresses) Set(vips []VIP) {
	a.mu.Lock()
	a.desired = slices.Clone(vips)
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run converges until ctx is done; errors are logged and retried, never returned.
func (a *Addresses) Run(ctx context.Context) error {
	l := &loop{clock: a.Clock, log: a.log, what: "vip addresses: reconcile", kick: a.kick,
		minInterval: a.MinInterval, maxBackoff: a.MaxBackoff, idle: a.idle}
	l.run(ctx, func(ctx context.Context) (time.Time, error) {
		err := a.pass(ctx)
		return a.Clock.Now().Add(a.ResyncPeriod), err
	})
	return nil
}

// Pass converges once, synchronously (Run calls it; handy in tests and at shutdown).
func (a *Addresses) Pass(ctx context.Context) error { return a.pass(ctx) }

func (a *Addresses) pass(ctx context.Context) error {
	a.mu.Lock()
	desired := a.desired
	a.mu.Unlock()
	want := map[VIP]bool{}
	var order []VIP // desired order: deterministic operations
	ifaces := map[string]bool{}
	for _, v := range desired {
		if !v.Addr.IsValid() {
			continue
		}
		v.Interface = v.iface()
		if !want[v] {
			order = append(order, v)
		}
		want[v] = true
		ifaces[v.Interface] = true
	}
	for v := range a.owned {
		ifaces[v.Interface] = true
	}
	var errs []error
	for _, ifc := range slices.Sorted(func(yield func(string) bool) {
		for k := range ifaces {
			if !yield(k) {
				return
			}
		}
	}) {
		have, err := a.b.List(ctx, ifc)
		if err != nil {
			errs = append(errs, fmt.Errorf("list addresses of %s: %w", ifc, err))
			continue
		}
		present := map[netip.Prefix]bool{}
		for _, p := range have {
			present[p] = true
		}
		for _, v := range order {
			if v.Interface != ifc {
				continue
			}
			p := v.prefix()
			if present[p] {
				if !a.owned[v] {
					a.log.Info("vip addresses: adopted", "address", p.String(), "interface", ifc)
				}
				a.owned[v] = true
				continue
			}
			if a.owned[v] {
				a.log.Warn("vip addresses drift: address removed outside kubal; restoring", "address", p.String(), "interface", ifc)
			}
			if err := a.b.Add(ctx, ifc, p); err != nil {
				errs = append(errs, fmt.Errorf("add %s to %s: %w", p, ifc, err))
				continue
			}
			a.owned[v] = true
			a.log.Info("vip addresses: "+a.verb("added"), "address", p.String(), "interface", ifc)
		}
		for _, v := range sortedVIPs(a.owned) {
			if v.Interface != ifc || want[v] {
				continue
			}
			p := v.prefix()
			if present[p] {
				if err := a.b.Delete(ctx, ifc, p); err != nil {
					errs = append(errs, fmt.Errorf("delete %s from %s: %w", p, ifc, err))
					continue
				}
				a.log.Info("vip addresses: "+a.verb("removed"), "address", p.String(), "interface", ifc)
			}
			delete(a.owned, v)
		}
	}
	return errors.Join(errs...)
}

// FakeAddrs is an in-memory AddrBackend. With a writer (NewDryRunAddrs) it also
// prints the `ip address` command of every change.
type FakeAddrs struct {
	mu    sync.Mutex
	addrs map[string][]netip.Prefix
	w     io.Writer
	fail  error
}

// NewFakeAddrs returns an empty in-memory address table.
func NewFakeAddrs() *FakeAddrs { return &FakeAddrs{addrs: map[string][]netip.Prefix{}} }

// NewDryRunAddrs returns an in-memory table that prints each change to w.
func NewDryRunAddrs(w io.Writer) *FakeAddrs {
	f := NewFakeAddrs()
	f.w = w
	return f
}

// SetFailure makes every call fail with err (nil: succeed again).
func (f *FakeAddrs) SetFailure(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// Get returns the addresses of iface.
func (f *FakeAddrs) Get(iface string) []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.addrs[iface])
}

// List implements AddrBackend.
func (f *FakeAddrs) List(ctx context.Context, iface string) ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	return slices.Clone(f.addrs[iface]), nil
}

// Add implements AddrBackend.
func (f *FakeAddrs) Add(ctx context.Context, iface string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if slices.Contains(f.addrs[iface], p) {
		return fmt.Errorf("address %s on %s: file exists", p, iface)
	}
	f.addrs[iface] = append(f.addrs[iface], p)
	if f.w != nil {
		fmt.Fprintf(f.w, "ip address add %s dev %s\n", p, iface)
	}
	return nil
}

// Delete implements AddrBackend.
func (f *FakeAddrs) Delete(ctx context.Context, iface string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	i := slices.Index(f.addrs[iface], p)
	if i < 0 {
		return fmt.Errorf("address %s on %s: cannot assign requested address", p, iface)
	}
	f.addrs[iface] = slices.Delete(f.addrs[iface], i, i+1)
	if f.w != nil {
		fmt.Fprintf(f.w, "ip address del %s dev %s\n", p, iface)
	}
	return nil
}

func sortedVIPs(m map[VIP]bool) []VIP {
	out := make([]VIP, 0, len(m))
	for v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b VIP) int { return cmp.Or(cmp.Compare(a.Interface, b.Interface), a.Addr.Compare(b.Addr)) })
	return out
}

// verb is what a log line says was done: in a dry run, what would have been.
func (a *Addresses) verb(done string) string {
	if a.DryRun {
		return "would have " + done + " (dry run)"
	}
	return done
}
