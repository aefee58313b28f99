package daemon

import (
	"context"
	"log/slog"

	"github.com/kubal/kubal/ipvs"
)

// debugBackend logs every IPVS change as the ipvsadm -R line PyBal's -d printed, then
// passes it to the real backend.
type debugBackend struct {
	ipvs.Backend
	log *slog.Logger
}

func (b debugBackend) AddService(ctx context.Context, s ipvs.Service) error {
	b.log.Debug(ipvs.AddServiceCommand(s))
	return b.Backend.AddService(ctx, s)
}

func (b debugBackend) UpdateService(ctx context.Context, s ipvs.Service) error {
	b.log.Debug(ipvs.UpdateServiceCommand(s))
	return b.Backend.UpdateService(ctx, s)
}

func (b debugBackend) DeleteService(ctx context.Context, k ipvs.ServiceKey) error {
	b.log.Debug(ipvs.DeleteServiceCommand(k))
	return b.Backend.DeleteService(ctx, k)
}

func (b debugBackend) AddDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	b.log.Debug(ipvs.AddDestinationCommand(k, d))
	return b.Backend.AddDestination(ctx, k, d)
}

func (b debugBackend) UpdateDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	b.log.Debug(ipvs.UpdateDestinationCommand(k, d))
	return b.Backend.UpdateDestination(ctx, k, d)
}

func (b debugBackend) DeleteDestination(ctx context.Context, k ipvs.ServiceKey, d ipvs.Destination) error {
	b.log.Debug(ipvs.DeleteDestinationCommand(k, d))
	return b.Backend.DeleteDestination(ctx, k, d)
}
