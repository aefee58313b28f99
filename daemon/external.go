package daemon

import (
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/conftool"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/source"
)

func scheme(u string) string {
	if i := strings.Index(u, "://"); i > 0 {
		return u[:i]
	}
	return ""
}

// sourceKey identifies what a service's source and admin store are built from: a
// change means a new actor.
func (d *Daemon) sourceKey(svc *config.Service, g config.Global) string {
	return fmt.Sprintf("%s|%s|%s|%s|%p", svc.ConfigURL, svc.Conftool, g.ConftoolPrefix, strings.Join(g.EtcdEndpoints, ","), d.declared.Load().Source(svc.Name))
}

// build returns a service's source, behind a guard that holds an update removing most
// of the pool at once, and its admin store, chosen once: conftool keys when the
// servers come from etcd or the service names `conftool =`, else the state file.
func (d *Daemon) build(g config.Global, svc *config.Service) (*source.Guard, admin.Store, error) {
	log := d.log.With("system", "config-"+scheme(svc.ConfigURL), "pool", svc.Name)
	var src source.Source
	var cli *clientv3.Client
	var prefix string
	var err error
	switch src = d.declared.Load().Source(svc.Name); {
	case src != nil: // a Kubernetes-declared service: its source is the controller's
	case scheme(svc.ConfigURL) == "file", scheme(svc.ConfigURL) == "http", scheme(svc.ConfigURL) == "https":
		src, err = source.New(svc.ConfigURL, log)
	case scheme(svc.ConfigURL) == "etcd":
		var endpoint string
		if endpoint, prefix, err = conftool.ParseURL(svc.ConfigURL); err == nil {
			if cli, err = d.etcd.Client(g, []string{endpoint}); err == nil {
				src = conftool.NewSource(cli, prefix, log, d.etcd.Metrics())
			}
		}
	case scheme(svc.ConfigURL) == "k8s":
		// The source labels its series with service=<pool> and reuses them across reloads.
		src, err = k8ssource.New(svc.ConfigURL, g, svc, log, d.reg)
	default:
		err = fmt.Errorf("config %q: unsupported URL scheme", svc.ConfigURL)
	}
	if err == nil && cli == nil && svc.Conftool != "" {
		if prefix, err = conftool.KeyPrefix(g.ConftoolPrefix, svc.Conftool); err == nil {
			cli, err = d.etcd.Client(g, nil)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	guard := source.NewGuard(src, source.GuardOptions{Clock: d.opts.Clock, Log: log})
	if cli == nil {
		return guard, d.state.Pool(svc.Name), nil
	}
	keys := conftool.NewKeys(cli, prefix, d.log.With("system", "conftool", "pool", svc.Name), d.etcd.Metrics())
	return guard, admin.NewConftool(keys, d.etcd.Writer(cli), prefix), nil
}
