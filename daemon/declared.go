package daemon

import (
	"context"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/monitor"
)

// startDeclared runs the controller of Kubernetes-declared services when pybal.conf
// has a [k8s-services] template. Each Desired it reports wakes the main loop, which
// runs those services next to the static ones (no reload, no restart).
func (d *Daemon) startDeclared(ctx context.Context, cfg *config.Config) error {
	if cfg.K8sServices == nil {
		return nil
	}
	ctrl, err := k8ssource.NewServices(cfg.Global, cfg.K8sServices, k8ssource.ServicesOptions{
		Static: cfg.Services, Checks: []func(*config.Service) config.Diagnostics{monitor.Validate},
		Log: d.log, Registerer: d.reg, ReadOnly: d.dryRun(cfg),
	})
	if err != nil {
		return err
	}
	d.declaredCtl = ctrl
	go func() {
		err := ctrl.Run(ctx, func(des k8ssource.Desired) {
			d.declared.Store(&des)
			select {
			case d.declaredCh <- struct{}{}:
			default:
			}
		})
		d.logStop("Kubernetes services controller", err, ctx)
	}()
	return nil
}
