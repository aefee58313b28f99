package ipvs

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// Open returns the kernel's IPVS and VIP-address backends, or with dryRun printers
// writing ipvsadm and ip lines to out. debug logs every IPVS change as PyBal's -d did.
func Open(dryRun, debug bool, out io.Writer, log *slog.Logger) (Backend, *Addresses, error) {
	vipLog := log.With("system", "vip")
	if dryRun {
		// The two printers run on different goroutines: one lock for the shared out.
		out = &syncWriter{w: out}
		a := NewAddressesWith(NewDryRunAddrs(out), vipLog)
		a.DryRun = true
		return NewDryRun(out), a, nil
	}
	nl, err := NewNetlink("")
	if err != nil {
		return nil, nil, fmt.Errorf("IPVS: %w (use -n/--dryrun on a host without IPVS)", err)
	}
	a, err := NewAddresses("", vipLog)
	if err != nil {
		return nil, nil, fmt.Errorf("VIP addresses: %w", err)
	}
	var b Backend = nl
	if debug {
		b = Debug(nl, log.With("system", "ipvs"))
	}
	return b, a, nil
}

// syncWriter serialises writes to w, which need not be safe for concurrent use (a
// bytes.Buffer in tests).
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
