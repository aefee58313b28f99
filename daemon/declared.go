package daemon

import (
	"context"
	"reflect"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/monitor"
)

// declaredRun is the running controller of Kubernetes-declared services.
type declaredRun struct {
	ctl  *k8ssource.Services
	tmpl *config.K8sServices
	stop context.CancelFunc
	done chan struct{} // closed when the controller's Run has returned
}

// newDeclared builds (does not start) the controller for cfg's [k8s-services]
// template; nil when there is none. An error (the template's node selector, the
// Kubernetes client) fails a start or a reload before anything changed.
func (d *Daemon) newDeclared(cfg *config.Config) (*k8ssource.Services, error) {
	if cfg.K8sServices == nil {
		return nil, nil
	}
	return k8ssource.NewServices(cfg.Global, cfg.K8sServices, k8ssource.ServicesOptions{
		Static: cfg.Services, Checks: []func(*config.Service) config.Diagnostics{monitor.Validate},
		Log: d.log, Registerer: d.reg, ReadOnly: d.dryRun(cfg),
	})
}

// runDeclared starts ctl (the template tmpl). Each Desired it reports wakes the main
// loop, which runs those services next to the static ones (no reload, no restart).
func (d *Daemon) runDeclared(ctx context.Context, ctl *k8ssource.Services, tmpl *config.K8sServices) {
	if ctl == nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &declaredRun{ctl: ctl, tmpl: tmpl, stop: cancel, done: make(chan struct{})}
	d.declaredRun = r
	go func() {
		defer close(r.done)
		err := ctl.Run(ctx, func(des k8ssource.Desired) {
			if ctx.Err() != nil {
				return // replaced by a reload: its successor's set counts
			}
			d.declared.Store(&des)
			select {
			case d.declaredCh <- struct{}{}:
			default:
			}
		})
		d.logStop("Kubernetes services controller", err, ctx)
	}()
}

// reloadDeclared applies a reloaded [k8s-services] template (main loop). The same
// template only re-checks the VIPs against the reloaded static services. A changed one
// replaces the controller; the declared services in force stay until the new one
// delivers its first set (then a service whose settings changed is reconfigured, or
// restarted as after a kubal restart: the kernel's state is kept until it has spoken).
// No template any more: the declared services are stopped and leave IPVS and BGP (their
// Services' status is left as it is, as after a restart without the template).
// next is the new controller, built by the caller before it committed the reload.
func (d *Daemon) reloadDeclared(cfg *config.Config, next *k8ssource.Services) {
	cur := d.declaredRun
	if cur != nil && reflect.DeepEqual(cur.tmpl, cfg.K8sServices) {
		cur.ctl.SetStatic(cfg.Services)
		return
	}
	if cur != nil {
		cur.stop()
		<-cur.done // one controller writes status at a time
		d.declaredRun = nil
		d.log.Info("[" + config.K8sServicesSection + "] changed: replacing the Kubernetes services controller")
	}
	if next == nil {
		d.declared.Store(nil)
		return
	}
	d.runDeclared(d.ctx, next, cfg.K8sServices)
}

// templateChanged reports whether a reload to cfg needs a new controller.
func (d *Daemon) templateChanged(cfg *config.Config) bool {
	if d.declaredRun == nil {
		return cfg.K8sServices != nil
	}
	return !reflect.DeepEqual(d.declaredRun.tmpl, cfg.K8sServices)
}
