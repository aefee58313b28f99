package conftool

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/config"
)

// Clients shares etcd connections (one per endpoint set, many watches), their writers
// and the conftool metrics among a daemon's services. It is safe for concurrent use.
type Clients struct {
	log *slog.Logger
	reg prometheus.Registerer

	mu      sync.Mutex
	etcd    map[string]*clientv3.Client
	writers map[*clientv3.Client]*Writer
	metrics *Metrics
}

// NewClients returns an empty set; metrics are registered with reg on first use.
func NewClients(log *slog.Logger, reg prometheus.Registerer) *Clients {
	return &Clients{log: log, reg: reg, etcd: map[string]*clientv3.Client{}, writers: map[*clientv3.Client]*Writer{}}
}

// Client returns the client of endpoints (nil: the global etcd-endpoints).
func (c *Clients) Client(g config.Global, endpoints []string) (*clientv3.Client, error) {
	key := strings.Join(endpoints, ",")
	if key == "" {
		eps := append([]string(nil), g.EtcdEndpoints...)
		sort.Strings(eps)
		key = "global:" + strings.Join(eps, ",")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cli, ok := c.etcd[key]; ok {
		return cli, nil
	}
	cli, err := NewClient(g, endpoints, c.log.With("system", "config-etcd"))
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	c.etcd[key] = cli
	return cli, nil
}

// Metrics returns the shared conftool metrics.
func (c *Clients) Metrics() *Metrics {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.metricsLocked()
}

func (c *Clients) metricsLocked() *Metrics {
	if c.metrics == nil {
		c.metrics = NewMetrics(c.reg)
	}
	return c.metrics
}

// Writer returns the writer of cli.
func (c *Clients) Writer(cli *clientv3.Client) *Writer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w, ok := c.writers[cli]; ok {
		return w
	}
	w := NewWriter(cli, c.log.With("system", "conftool"), c.metricsLocked())
	c.writers[cli] = w
	return w
}

// Close closes every client.
func (c *Clients) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cli := range c.etcd {
		_ = cli.Close()
	}
	c.etcd = map[string]*clientv3.Client{}
}
