package ipvs

import (
	"context"
	"fmt"
	"log/slog"
)

// Debug returns b logging every change as the ipvsadm -R line PyBal's -d printed
// (which also turns off netlink batching: fine for debugging).
func Debug(b Backend, log *slog.Logger) Backend { return debugBackend{Backend: b, log: log} }

type debugBackend struct {
	Backend
	log *slog.Logger
}

// Sysctl implements SysctlBackend when the wrapped backend does.
func (b debugBackend) Sysctl(name string) (string, error) {
	sb, ok := b.Backend.(SysctlBackend)
	if !ok {
		return "", fmt.Errorf("sysctl %s: this IPVS backend has no sysctls", name)
	}
	return sb.Sysctl(name)
}

// SetSysctl implements SysctlBackend when the wrapped backend does.
func (b debugBackend) SetSysctl(name, value string) error {
	sb, ok := b.Backend.(SysctlBackend)
	if !ok {
		return fmt.Errorf("sysctl %s: this IPVS backend has no sysctls", name)
	}
	b.log.Debug("sysctl -w " + name + "=" + value)
	return sb.SetSysctl(name, value)
}

func (b debugBackend) AddService(ctx context.Context, s Service) error {
	b.log.Debug(AddServiceCommand(s))
	return b.Backend.AddService(ctx, s)
}

func (b debugBackend) UpdateService(ctx context.Context, s Service) error {
	b.log.Debug(UpdateServiceCommand(s))
	return b.Backend.UpdateService(ctx, s)
}

func (b debugBackend) DeleteService(ctx context.Context, k ServiceKey) error {
	b.log.Debug(DeleteServiceCommand(k))
	return b.Backend.DeleteService(ctx, k)
}

func (b debugBackend) AddDestination(ctx context.Context, k ServiceKey, d Destination) error {
	b.log.Debug(AddDestinationCommand(k, d))
	return b.Backend.AddDestination(ctx, k, d)
}

func (b debugBackend) UpdateDestination(ctx context.Context, k ServiceKey, d Destination) error {
	b.log.Debug(UpdateDestinationCommand(k, d))
	return b.Backend.UpdateDestination(ctx, k, d)
}

func (b debugBackend) DeleteDestination(ctx context.Context, k ServiceKey, d Destination) error {
	b.log.Debug(DeleteDestinationCommand(k, d))
	return b.Backend.DeleteDestination(ctx, k, d)
}
