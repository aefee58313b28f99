package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Errors of the in-memory backends, shaped like the kernel's answers.
var (
	ErrServiceExists   = errors.New("service already exists")
	ErrNoService       = errors.New("no such service")
	ErrDestExists      = errors.New("destination already exists")
	ErrNoDest          = errors.New("no such destination")
	ErrInvalidArgument = errors.New("invalid argument")
)

// Operation kinds: metric labels of the Reconciler, keys of Fake.Calls.
const (
	OpDumpServices      = "dump_services"
	OpDumpDestinations  = "dump_destinations"
	OpAddService        = "add_service"
	OpUpdateService     = "update_service"
	OpDeleteService     = "delete_service"
	OpAddDestination    = "add_destination"
	OpUpdateDestination = "update_destination"
	OpDeleteDestination = "delete_destination"
)

// Fake is an in-memory Backend that behaves like the kernel table (errors for
// duplicates and missing entries, destination port 0 = the virtual port) and lets
// tests inspect it, inject failures and set connection counters. Safe for concurrent use.
type Fake struct {
	mu    sync.Mutex
	svcs  map[ServiceKey]*fakeService
	order []ServiceKey // insertion order, for stable dumps
	calls map[string]int
	fail  func(op string, k ServiceKey, d Destination) error
	// sysctls: every sysctl reads "0" (the kernel's IPVS defaults) until set.
	sysctls map[string]string
}

// Sysctl implements SysctlBackend.
func (f *Fake) Sysctl(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.sysctls[name]; ok {
		return v, nil
	}
	return "0", nil
}

// SetSysctl implements SysctlBackend.
func (f *Fake) SetSysctl(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sysctls == nil {
		f.sysctls = map[string]string{}
	}
	f.sysctls[name] = value
	return nil
}

type fakeService struct {
	svc   Service
	dests []Destination // newest first: the kernel adds to the head of the list
	// lastWeight per destination, as the kernel keeps it: set by an add and by an
	// update to a non-zero weight (the mh scheduler builds its table from it).
	lastWeight map[destKey]int
}

// NewFake returns an empty in-memory backend.
func NewFake() *Fake {
	return &Fake{svcs: map[ServiceKey]*fakeService{}, calls: map[string]int{}}
}

// SetFailure installs a hook called before every operation (op is one of the Op*
// constants); a non-nil error fails the operation without changing state. nil removes it.
func (f *Fake) SetFailure(fn func(op string, k ServiceKey, d Destination) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

// Calls returns how many times each operation kind was called.
func (f *Fake) Calls() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.calls))
	for k, v := range f.calls {
		out[k] = v
	}
	return out
}

// ResetCalls zeroes the call counters.
func (f *Fake) ResetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = map[string]int{}
}

// SetConns sets the connection counters of a destination (as the kernel reports them).
func (f *Fake) SetConns(k ServiceKey, addr netip.Addr, port uint16, active, inactive int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.svcs[k]
	if !ok {
		return ErrNoService
	}
	i := s.find(k, addr, port)
	if i < 0 {
		return ErrNoDest
	}
	s.dests[i].ActiveConns, s.dests[i].InactiveConns = active, inactive
	return nil
}

// MHInput returns what the kernel's mh scheduler builds the lookup table of service k
// from: its destinations in list order, each with its last non-zero weight (the weight
// it was added with if never updated to non-zero). Two services with the same MHInput
// have the same table.
func (f *Fake) MHInput(k ServiceKey) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.svcs[k]
	if !ok {
		return nil
	}
	out := make([]string, 0, len(s.dests))
	for _, d := range s.dests {
		out = append(out, fmt.Sprintf("%s last_weight=%d", netip.AddrPortFrom(d.Addr, d.Port), s.lastWeight[keyOf(k, d)]))
	}
	return out
}

// Table returns a copy of the whole table: every service with its destinations.
func (f *Fake) Table() map[ServiceKey]Pool {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[ServiceKey]Pool, len(f.svcs))
	for k, s := range f.svcs {
		out[k] = Pool{Service: cloneService(s.svc), Destinations: slices.Clone(s.dests)}
	}
	return out
}

func (f *Fake) check(op string, k ServiceKey, d Destination) error {
	f.calls[op]++
	if f.fail != nil {
		return f.fail(op, k, d)
	}
	return nil
}

func (s *fakeService) find(k ServiceKey, addr netip.Addr, port uint16) int {
	if port == 0 {
		port = k.Port
	}
	return slices.IndexFunc(s.dests, func(d Destination) bool { return d.Addr == addr && d.Port == port })
}

func validService(s Service) error {
	if s.FWMark != 0 {
		return validFWMark(s.ServiceKey)
	}
	if !s.Addr.IsValid() || (s.Protocol != TCP && s.Protocol != UDP) {
		return fmt.Errorf("%w: service %q", ErrInvalidArgument, s.ServiceKey)
	}
	return nil
}

// Services implements Backend.
func (f *Fake) Services(ctx context.Context) ([]Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(OpDumpServices, ServiceKey{}, Destination{}); err != nil {
		return nil, err
	}
	out := make([]Service, 0, len(f.order))
	for _, k := range f.order {
		out = append(out, cloneService(f.svcs[k].svc))
	}
	return out, nil
}

// AddService implements Backend.
func (f *Fake) AddService(ctx context.Context, s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(OpAddService, s.ServiceKey, Destination{}); err != nil {
		return err
	}
	if err := validService(s); err != nil {
		return err
	}
	if _, ok := f.svcs[s.ServiceKey]; ok {
		return ErrServiceExists
	}
	f.svcs[s.ServiceKey] = &fakeService{svc: cloneService(s)}
	f.order = append(f.order, s.ServiceKey)
	return nil
}

// UpdateService implements Backend.
func (f *Fake) UpdateService(ctx context.Context, s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(OpUpdateService, s.ServiceKey, Destination{}); err != nil {
		return err
	}
	if err := validService(s); err != nil {
		return err
	}
	cur, ok := f.svcs[s.ServiceKey]
	if !ok {
		return ErrNoService
	}
	cur.svc = cloneService(s)
	return nil
}

// DeleteService implements Backend.
func (f *Fake) DeleteService(ctx context.Context, k ServiceKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(OpDeleteService, k, Destination{}); err != nil {
		return err
	}
	if _, ok := f.svcs[k]; !ok {
		return ErrNoService
	}
	delete(f.svcs, k)
	f.order = slices.DeleteFunc(f.order, func(o ServiceKey) bool { return o == k })
	return nil
}

// Destinations implements Backend.
func (f *Fake) Destinations(ctx context.Context, k ServiceKey) ([]Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(OpDumpDestinations, k, Destination{}); err != nil {
		return nil, err
	}
	s, ok := f.svcs[k]
	if !ok {
		return nil, ErrNoService
	}
	return slices.Clone(s.dests), nil
}

// AddDestination implements Backend.
func (f *Fake) AddDestination(ctx context.Context, k ServiceKey, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(OpAddDestination, k, d); err != nil {
		return err
	}
	s, ok := f.svcs[k]
	if !ok {
		return ErrNoService
	}
	if !d.Addr.IsValid() || d.Addr.Is4() != k.Addr.Is4() && d.Forwarding != Tunnel || d.Weight < 0 {
		return fmt.Errorf("%w: destination %v", ErrInvalidArgument, d.Addr)
	}
	if s.find(k, d.Addr, d.Port) >= 0 {
		return ErrDestExists
	}
	n := normalizeDest(k, d)
	s.dests = slices.Insert(s.dests, 0, n)
	if s.lastWeight == nil {
		s.lastWeight = map[destKey]int{}
	}
	s.lastWeight[keyOf(k, n)] = n.Weight
	return nil
}

// UpdateDestination implements Backend.
func (f *Fake) UpdateDestination(ctx context.Context, k ServiceKey, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, i, err := f.existing(OpUpdateDestination, k, d)
	if err != nil {
		return err
	}
	if d.Weight < 0 {
		return fmt.Errorf("%w: weight %d", ErrInvalidArgument, d.Weight)
	}
	n := normalizeDest(k, d)
	n.ActiveConns, n.InactiveConns = s.dests[i].ActiveConns, s.dests[i].InactiveConns
	s.dests[i] = n
	if n.Weight != 0 {
		s.lastWeight[keyOf(k, n)] = n.Weight
	}
	return nil
}

// DeleteDestination implements Backend.
func (f *Fake) DeleteDestination(ctx context.Context, k ServiceKey, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, i, err := f.existing(OpDeleteDestination, k, d)
	if err != nil {
		return err
	}
	delete(s.lastWeight, keyOf(k, s.dests[i]))
	s.dests = slices.Delete(s.dests, i, i+1)
	return nil
}

// existing finds a destination that an update or delete needs to exist (f.mu held).
func (f *Fake) existing(op string, k ServiceKey, d Destination) (*fakeService, int, error) {
	if err := f.check(op, k, d); err != nil {
		return nil, -1, err
	}
	s, ok := f.svcs[k]
	if !ok {
		return nil, -1, ErrNoService
	}
	i := s.find(k, d.Addr, d.Port)
	if i < 0 {
		return nil, -1, ErrNoDest
	}
	return s, i, nil
}

// normalizeDest is what the kernel stores: the real port, a forwarding method, no counters.
func normalizeDest(k ServiceKey, d Destination) Destination {
	if d.Port == 0 {
		d.Port = k.Port
	}
	if d.Forwarding == "" {
		d.Forwarding = DR
	}
	d.ActiveConns, d.InactiveConns = 0, 0
	return d
}

func cloneService(s Service) Service {
	s.Flags = slices.Clone(s.Flags)
	return s
}
