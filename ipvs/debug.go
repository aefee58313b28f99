package ipvs

import (
	"context"
	"log/slog"
)

// Debug returns b logging every change as the ipvsadm -R line PyBal's -d printed
// (which also turns off netlink batching: fine for debugging).
func Debug(b Backend, log *slog.Logger) Backend { return debugBackend{Backend: b, log: log} }

type debugBackend struct {
	Backend
	log *slog.Logger
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
