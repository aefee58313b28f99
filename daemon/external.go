package daemon

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/conftool"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/source"
)

// newExternalSource builds the etcd:// and k8s:// sources, and wraps any non-etcd
// source in a conftool overlay when the service has `conftool = dc/cluster/service`.
func (d *Daemon) newExternalSource(svc *config.Service, log *slog.Logger) (source.Source, error) {
	g := d.Config().Global
	switch scheme(svc.ConfigURL) {
	case "etcd":
		endpoint, prefix, err := conftool.ParseURL(svc.ConfigURL)
		if err != nil {
			return nil, err
		}
		cli, err := d.etcdClient(g, []string{endpoint})
		if err != nil {
			return nil, err
		}
		return conftool.NewSource(cli, prefix, log, d.conftoolMetrics()), nil
	case "k8s":
		// The source labels its series with service=<pool> and reuses them across reloads.
		src, err := k8ssource.New(svc.ConfigURL, g, svc, log, d.reg)
		if err != nil {
			return nil, err
		}
		return d.withOverlay(svc, src, log)
	}
	return nil, fmt.Errorf("config %q: unsupported URL scheme", svc.ConfigURL)
}

// withOverlay gates src with conftool keys when the service asks for it.
func (d *Daemon) withOverlay(svc *config.Service, src source.Source, log *slog.Logger) (source.Source, error) {
	if svc.Conftool == "" {
		return src, nil
	}
	g := d.Config().Global
	prefix, err := conftool.KeyPrefix(g.ConftoolPrefix, svc.Conftool)
	if err != nil {
		return nil, err
	}
	cli, err := d.etcdClient(g, nil)
	if err != nil {
		return nil, err
	}
	return conftool.NewOverlay(src, cli, prefix, log, d.conftoolMetrics()), nil
}

// conftoolTarget returns the etcd client and key prefix that hold a service's admin
// state, or ok=false when the service keeps it in the local state file.
func (d *Daemon) conftoolTarget(svc *config.Service) (cli *clientv3.Client, prefix string, ok bool, err error) {
	g := d.Config().Global
	switch {
	case scheme(svc.ConfigURL) == "etcd":
		endpoint, p, err := conftool.ParseURL(svc.ConfigURL)
		if err != nil {
			return nil, "", false, err
		}
		cli, err := d.etcdClient(g, []string{endpoint})
		return cli, p, err == nil, err
	case svc.Conftool != "":
		p, err := conftool.KeyPrefix(g.ConftoolPrefix, svc.Conftool)
		if err != nil {
			return nil, "", false, err
		}
		cli, err := d.etcdClient(g, nil)
		return cli, p, err == nil, err
	}
	return nil, "", false, nil
}

// etcdClient returns a shared client per endpoint set (one connection, many watches).
func (d *Daemon) etcdClient(g config.Global, endpoints []string) (*clientv3.Client, error) {
	key := strings.Join(endpoints, ",")
	if key == "" {
		eps := append([]string(nil), g.EtcdEndpoints...)
		sort.Strings(eps)
		key = "global:" + strings.Join(eps, ",")
	}
	d.extMu.Lock()
	defer d.extMu.Unlock()
	if cli, ok := d.etcd[key]; ok {
		return cli, nil
	}
	cli, err := conftool.NewClient(g, endpoints, d.log.With("system", "config-etcd"))
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	d.etcd[key] = cli
	return cli, nil
}

func (d *Daemon) conftoolMetrics() *conftool.Metrics {
	d.extMu.Lock()
	defer d.extMu.Unlock()
	return d.conftoolMetricsLocked()
}

func (d *Daemon) conftoolMetricsLocked() *conftool.Metrics {
	if d.ctMetrics == nil {
		d.ctMetrics = conftool.NewMetrics(d.reg)
	}
	return d.ctMetrics
}

func (d *Daemon) conftoolWriter(cli *clientv3.Client) *conftool.Writer {
	d.extMu.Lock()
	defer d.extMu.Unlock()
	if w, ok := d.writers[cli]; ok {
		return w
	}
	w := conftool.NewWriter(cli, d.log.With("system", "conftool"), d.conftoolMetricsLocked())
	d.writers[cli] = w
	return w
}

func (d *Daemon) closeExternal() {
	d.extMu.Lock()
	defer d.extMu.Unlock()
	for _, cli := range d.etcd {
		_ = cli.Close()
	}
	d.etcd = map[string]*clientv3.Client{}
}
