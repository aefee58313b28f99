package daemon

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/adminstate"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/conftool"
	"github.com/kubal/kubal/k8ssource"
	"github.com/kubal/kubal/source"
)

// external holds what services share outside the process: etcd clients (one per
// endpoint set), conftool metrics and writers, and the local state file.
type external struct {
	log *slog.Logger
	reg prometheus.Registerer

	mu      sync.Mutex
	etcd    map[string]*clientv3.Client
	writers map[*clientv3.Client]*conftool.Writer
	metrics *conftool.Metrics
	state   *admin.StateFile
}

func newExternal(log *slog.Logger, reg prometheus.Registerer) *external {
	return &external{log: log, reg: reg, etcd: map[string]*clientv3.Client{}, writers: map[*clientv3.Client]*conftool.Writer{}}
}

// openState opens the local admin state file (services without conftool).
func (e *external) openState(g config.Global) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != nil {
		return nil
	}
	f, err := adminstate.Open(g.StateFile, e.log.With("system", "adminstate"))
	if err != nil {
		return fmt.Errorf("state-file: %w", err)
	}
	e.state = admin.NewStateFile(f)
	return nil
}

func scheme(u string) string {
	if i := strings.Index(u, "://"); i > 0 {
		return u[:i]
	}
	return ""
}

// sourceKey identifies what a service's source and admin store are built from: a
// change means a new actor.
func sourceKey(svc *config.Service, g config.Global) string {
	return svc.ConfigURL + "|" + svc.Conftool + "|" + g.ConftoolPrefix + "|" + strings.Join(g.EtcdEndpoints, ",")
}

// build returns a service's source and its admin store, chosen once: conftool keys
// when the servers come from etcd or the service names `conftool =`, else the state
// file.
func (e *external) build(g config.Global, svc *config.Service) (source.Source, admin.Store, error) {
	log := e.log.With("system", "config-"+scheme(svc.ConfigURL), "pool", svc.Name)
	var src source.Source
	var cli *clientv3.Client
	var prefix string
	var err error
	switch scheme(svc.ConfigURL) {
	case "file", "http", "https":
		src, err = source.New(svc.ConfigURL, log)
	case "etcd":
		var endpoint string
		if endpoint, prefix, err = conftool.ParseURL(svc.ConfigURL); err != nil {
			return nil, nil, err
		}
		if cli, err = e.client(g, []string{endpoint}); err != nil {
			return nil, nil, err
		}
		src = conftool.NewSource(cli, prefix, log, e.conftoolMetrics())
	case "k8s":
		// The source labels its series with service=<pool> and reuses them across reloads.
		src, err = k8ssource.New(svc.ConfigURL, g, svc, log, e.reg)
	default:
		err = fmt.Errorf("config %q: unsupported URL scheme", svc.ConfigURL)
	}
	if err != nil {
		return nil, nil, err
	}
	if cli == nil && svc.Conftool != "" {
		if prefix, err = conftool.KeyPrefix(g.ConftoolPrefix, svc.Conftool); err != nil {
			return nil, nil, err
		}
		if cli, err = e.client(g, nil); err != nil {
			return nil, nil, err
		}
	}
	if cli == nil {
		e.mu.Lock()
		defer e.mu.Unlock()
		return src, e.state.Pool(svc.Name), nil
	}
	keys := conftool.NewKeys(cli, prefix, e.log.With("system", "conftool", "pool", svc.Name), e.conftoolMetrics())
	return src, admin.NewConftool(keys, e.writer(cli), prefix), nil
}

// client returns a shared client per endpoint set (one connection, many watches).
func (e *external) client(g config.Global, endpoints []string) (*clientv3.Client, error) {
	key := strings.Join(endpoints, ",")
	if key == "" {
		eps := append([]string(nil), g.EtcdEndpoints...)
		sort.Strings(eps)
		key = "global:" + strings.Join(eps, ",")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if cli, ok := e.etcd[key]; ok {
		return cli, nil
	}
	cli, err := conftool.NewClient(g, endpoints, e.log.With("system", "config-etcd"))
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	e.etcd[key] = cli
	return cli, nil
}

func (e *external) conftoolMetrics() *conftool.Metrics {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.metricsLocked()
}

func (e *external) metricsLocked() *conftool.Metrics {
	if e.metrics == nil {
		e.metrics = conftool.NewMetrics(e.reg)
	}
	return e.metrics
}

func (e *external) writer(cli *clientv3.Client) *conftool.Writer {
	e.mu.Lock()
	defer e.mu.Unlock()
	if w, ok := e.writers[cli]; ok {
		return w
	}
	w := conftool.NewWriter(cli, e.log.With("system", "conftool"), e.metricsLocked())
	e.writers[cli] = w
	return w
}

func (e *external) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, cli := range e.etcd {
		_ = cli.Close()
	}
	e.etcd = map[string]*clientv3.Client{}
}
