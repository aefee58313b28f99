package conftool

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/kubal/kubal/config"
)

// DefaultPort is etcd's client port, used when an endpoint or etcd:// URL has none.
const DefaultPort = "2379"

// DefaultPrefix is conftool's pool tree (config `conftool-prefix`).
const DefaultPrefix = "/conftool/v1/pools"

// NewClient builds an etcd v3 client. The endpoints are the given ones (from an etcd://
// URL) or else [global] etcd-endpoints. TLS is used when etcd-ca, etcd-cert or etcd-key
// is set or any endpoint is https://; otherwise plain text, with a warning for every
// endpoint that is not loopback. The client connects lazily: an etcd that is down at
// start is not an error here (sources report it and retry).
func NewClient(g config.Global, endpoints []string, log *slog.Logger) (*clientv3.Client, error) {
	cfg, err := clientConfig(g, endpoints, log)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("conftool: etcd client for %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

func clientConfig(g config.Global, endpoints []string, log *slog.Logger) (clientv3.Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	eps := endpoints
	what := "etcd:// URL"
	if len(eps) == 0 {
		eps = g.EtcdEndpoints
		what = "[global] etcd-endpoints"
	}
	if len(eps) == 0 {
		return clientv3.Config{}, errors.New("conftool: no etcd endpoints: set [global] etcd-endpoints or use an etcd://host[:port]/... URL")
	}
	useTLS := g.EtcdCA != "" || g.EtcdCert != "" || g.EtcdKey != ""
	hostports := make([]string, 0, len(eps))
	for _, ep := range eps {
		hp, https, err := splitEndpoint(ep)
		if err != nil {
			return clientv3.Config{}, fmt.Errorf("conftool: %s: %w", what, err)
		}
		useTLS = useTLS || https
		hostports = append(hostports, hp)
	}
	cfg := clientv3.Config{
		Endpoints:            hostports,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// The client's own zap logs duplicate what the sources report through slog.
		Logger: zap.NewNop(),
		// gRPC's default reconnect backoff grows to 120 s: after a long etcd outage the
		// sources would stay blind long after etcd is back. Cap it at 2 s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 2 * time.Second,
		})},
	}
	if useTLS {
		tc, err := tlsConfig(g)
		if err != nil {
			return clientv3.Config{}, err
		}
		cfg.TLS = tc
	} else {
		for _, hp := range hostports {
			if !isLoopback(hp) {
				log.Warn("conftool: etcd endpoint uses plain text: set etcd-ca/etcd-cert/etcd-key or an https:// endpoint",
					"endpoint", hp)
			}
		}
	}
	return cfg, nil
}

// splitEndpoint turns "host", "host:port", "http://host:port" or "https://host:port"
// into host:port (default port 2379) and whether the scheme asks for TLS.
func splitEndpoint(ep string) (hostport string, https bool, err error) {
	ep = strings.TrimSpace(ep)
	hp := ep
	if i := strings.Index(ep, "://"); i >= 0 {
		u, err := url.Parse(ep)
		if err != nil {
			return "", false, fmt.Errorf("endpoint %q: %w", ep, err)
		}
		switch u.Scheme {
		case "https":
			https = true
		case "http":
		default:
			return "", false, fmt.Errorf("endpoint %q: scheme must be http or https", ep)
		}
		if u.Path != "" && u.Path != "/" {
			return "", false, fmt.Errorf("endpoint %q: an endpoint has no path", ep)
		}
		hp = u.Host
	}
	hp, err = withDefaultPort(hp)
	if err != nil {
		return "", false, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	return hp, https, nil
}

func withDefaultPort(hp string) (string, error) {
	if hp == "" {
		return "", errors.New("empty host")
	}
	if host, port, err := net.SplitHostPort(hp); err == nil {
		if host == "" || port == "" {
			return "", fmt.Errorf("%q: empty host or port", hp)
		}
		return hp, nil
	}
	host := strings.TrimSuffix(strings.TrimPrefix(hp, "["), "]")
	if strings.ContainsAny(host, "[]/") {
		return "", fmt.Errorf("%q: bad host", hp)
	}
	return net.JoinHostPort(host, DefaultPort), nil
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

func tlsConfig(g config.Global) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if g.EtcdCA != "" {
		pem, err := os.ReadFile(g.EtcdCA)
		if err != nil {
			return nil, fmt.Errorf("conftool: etcd-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("conftool: etcd-ca: %s holds no PEM certificate", g.EtcdCA)
		}
		tc.RootCAs = pool
	}
	if (g.EtcdCert == "") != (g.EtcdKey == "") {
		return nil, errors.New("conftool: etcd-cert and etcd-key must be set together")
	}
	if g.EtcdCert != "" {
		cert, err := tls.LoadX509KeyPair(g.EtcdCert, g.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("conftool: etcd-cert/etcd-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// ParseURL splits PyBal's etcd://host[:port]/conftool/v1/pools/<dc>/<cluster>/<service>/
// into the endpoint host:port (default port 2379) and the key prefix, which always
// ends with "/" (the servers are its immediate children).
func ParseURL(u string) (endpoint string, keyPrefix string, err error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", "", fmt.Errorf("conftool: bad etcd URL %q: %w", u, err)
	}
	if pu.Scheme != "etcd" {
		return "", "", fmt.Errorf("conftool: URL %q: scheme must be etcd://", u)
	}
	if pu.User != nil || pu.RawQuery != "" || pu.Fragment != "" {
		return "", "", fmt.Errorf("conftool: URL %q: no user, query or fragment allowed", u)
	}
	endpoint, err = withDefaultPort(pu.Host)
	if err != nil {
		return "", "", fmt.Errorf("conftool: URL %q: %w", u, err)
	}
	p := pu.Path
	if strings.Trim(p, "/") == "" {
		return "", "", fmt.Errorf("conftool: URL %q: no key path (want /conftool/v1/pools/<dc>/<cluster>/<service>/)", u)
	}
	if strings.Contains(p, "//") {
		return "", "", fmt.Errorf("conftool: URL %q: empty path component", u)
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return endpoint, p, nil
}

// KeyPrefix returns the key prefix of `conftool = dc/cluster/service` under the global
// conftool-prefix ("" = DefaultPrefix), ending with "/".
func KeyPrefix(prefix, dcClusterService string) (string, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasPrefix(prefix, "/") {
		return "", fmt.Errorf("conftool: conftool-prefix %q must start with /", prefix)
	}
	parts := strings.Split(dcClusterService, "/")
	if len(parts) != 3 {
		return "", fmt.Errorf("conftool: conftool = %q: want dc/cluster/service", dcClusterService)
	}
	for _, p := range parts {
		if strings.TrimSpace(p) != p || p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("conftool: conftool = %q: bad component %q", dcClusterService, p)
		}
	}
	return strings.TrimSuffix(prefix, "/") + "/" + dcClusterService + "/", nil
}
