package ipvs

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// DryRun is a Backend for `kubal --dryrun`: every operation is written to w as the
// `ipvsadm -R` line PyBal would send, and applied to an in-memory table so that the
// Reconciler sees its own changes. Nothing touches the kernel.
type DryRun struct {
	mu  sync.Mutex
	w   io.Writer
	tab *Fake
}

// NewDryRun returns a dry-run backend writing one line per operation to w.
func NewDryRun(w io.Writer) *DryRun { return &DryRun{w: w, tab: NewFake()} }

// emit applies op to the in-memory table and prints its line if it succeeded (a
// failing op would have failed in ipvsadm too; the Reconciler logs the error).
func (d *DryRun) emit(line string, op func() error) error {
	if err := op(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := fmt.Fprintln(d.w, line); err != nil {
		return fmt.Errorf("dry run output: %w", err)
	}
	return nil
}

// Sysctl implements SysctlBackend: the values this dry run "set", else "0".
func (d *DryRun) Sysctl(name string) (string, error) { return d.tab.Sysctl(name) }

// SetSysctl implements SysctlBackend: printed as the sysctl command, not applied.
func (d *DryRun) SetSysctl(name, value string) error {
	return d.emit("sysctl -w "+name+"="+value, func() error { return d.tab.SetSysctl(name, value) })
}

// Services implements Backend.
func (d *DryRun) Services(ctx context.Context) ([]Service, error) { return d.tab.Services(ctx) }

// Destinations implements Backend.
func (d *DryRun) Destinations(ctx context.Context, k ServiceKey) ([]Destination, error) {
	return d.tab.Destinations(ctx, k)
}

// AddService implements Backend.
func (d *DryRun) AddService(ctx context.Context, s Service) error {
	return d.emit(AddServiceCommand(s), func() error { return d.tab.AddService(ctx, s) })
}

// UpdateService implements Backend.
func (d *DryRun) UpdateService(ctx context.Context, s Service) error {
	return d.emit(UpdateServiceCommand(s), func() error { return d.tab.UpdateService(ctx, s) })
}

// DeleteService implements Backend.
func (d *DryRun) DeleteService(ctx context.Context, k ServiceKey) error {
	return d.emit(DeleteServiceCommand(k), func() error { return d.tab.DeleteService(ctx, k) })
}

// AddDestination implements Backend.
func (d *DryRun) AddDestination(ctx context.Context, k ServiceKey, dst Destination) error {
	return d.emit(AddDestinationCommand(k, dst), func() error { return d.tab.AddDestination(ctx, k, dst) })
}

// UpdateDestination implements Backend.
func (d *DryRun) UpdateDestination(ctx context.Context, k ServiceKey, dst Destination) error {
	return d.emit(UpdateDestinationCommand(k, dst), func() error { return d.tab.UpdateDestination(ctx, k, dst) })
}

// DeleteDestination implements Backend.
func (d *DryRun) DeleteDestination(ctx context.Context, k ServiceKey, dst Destination) error {
	return d.emit(DeleteDestinationCommand(k, dst), func() error { return d.tab.DeleteDestination(ctx, k, dst) })
}
