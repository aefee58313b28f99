package conftool

import (
	"context"
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
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

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
//
// A request that times out while the connection cannot be made says why: the last
// dial or TLS handshake error (x509, handshake failure, connection refused) is added
// to the error ("context deadline exceeded (last connection attempt to etcd: ...)"),
// which still matches errors.Is(err, context.DeadlineExceeded). gRPC waits for a
// ready connection and etcd's client reports only the deadline otherwise.
func NewClient(g config.Global, endpoints []string, log *slog.Logger) (*clientv3.Client, error) {
	cfg, err := clientConfig(g, endpoints, log)
	if err != nil {
		return nil, err
	}
	rec := &connRecorder{}
	dialer := &net.Dialer{}
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, "tcp", addr)
		return rec.dialed(c, err, cfg.TLS == nil)
	}))
	if cfg.TLS != nil {
		// Appended after etcd's own options, so these credentials are the ones used.
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithTransportCredentials(recordingCreds{credentials.NewTLS(cfg.TLS), rec}))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("conftool: etcd client for %v: %w", cfg.Endpoints, err)
	}
	cli.KV = explainKV{KV: cli.KV, rec: rec}
	return cli, nil
}

// connRecorder keeps the last error of connecting to etcd (dial, TLS handshake, or
// the server's TLS alert). Only data read from the server clears it: a dial or a
// handshake that succeeds proves nothing with TLS 1.3, where the server refuses a
// client certificate after the client's handshake, and clearing there let gRPC's next
// reconnect erase the reason just before a deadline (TestNewClientTLS, under load).
type connRecorder struct {
	err atomic.Pointer[error]
}

func (r *connRecorder) set(err error) {
	if err == nil {
		r.err.Store(nil)
		return
	}
	r.err.Store(&err)
}

// dialed records a dial's error; a plain-text connection is wrapped so that its first
// data clears the record (with TLS, the handshake wraps it instead).
func (r *connRecorder) dialed(c net.Conn, err error, plain bool) (net.Conn, error) {
	switch {
	case err != nil:
		r.set(err)
	case plain:
		return recordingConn{c, r}, nil
	}
	return c, err
}

// served: the server sent data on a connection, so connecting works.
func (r *connRecorder) served() {
	if r.err.Load() != nil {
		r.err.Store(nil)
	}
}

func (r *connRecorder) last() error {
	if p := r.err.Load(); p != nil {
		return *p
	}
	return nil
}

// explain adds the last connection error to a timeout or unavailability error.
func (r *connRecorder) explain(err error) error {
	if err == nil {
		return nil
	}
	last := r.last()
	if last == nil {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%w (last connection attempt to etcd: %v)", err, last)
	}
	return err
}

// recordingCreds is TLS transport credentials that record handshake errors.
type recordingCreds struct {
	credentials.TransportCredentials
	rec *connRecorder
}

func (c recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		if ctx.Err() == nil {
			c.rec.set(err)
		}
		return conn, info, err
	}
	// With TLS 1.3 the server checks the client certificate after the client's
	// handshake is done: its refusal ("remote error: tls: certificate required")
	// arrives on the first read.
	return recordingConn{conn, c.rec}, info, nil
}

// recordingConn records a TLS alert read from the server.
type recordingConn struct {
	net.Conn
	rec *connRecorder
}

func (c recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	switch {
	case err != nil && strings.Contains(err.Error(), "remote error: tls:"):
		c.rec.set(err)
	case n > 0:
		c.rec.served()
	}
	return n, err
}

func (c recordingCreds) Clone() credentials.TransportCredentials {
	return recordingCreds{c.TransportCredentials.Clone(), c.rec}
}

// explainKV is the client's KV with connection errors explained (see NewClient).
type explainKV struct {
	clientv3.KV
	rec *connRecorder
}

func (k explainKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	r, err := k.KV.Put(ctx, key, val, opts...)
	return r, k.rec.explain(err)
}

func (k explainKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r, err := k.KV.Get(ctx, key, opts...)
	return r, k.rec.explain(err)
}

func (k explainKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	r, err := k.KV.Delete(ctx, key, opts...)
	return r, k.rec.explain(err)
}

func (k explainKV) Compact(ctx context.Context, rev int64, opts ...clientv3.CompactOption) (*clientv3.CompactResponse, error) {
	r, err := k.KV.Compact(ctx, rev, opts...)
	return r, k.rec.explain(err)
}

func (k explainKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	r, err := k.KV.Do(ctx, op)
	return r, k.rec.explain(err)
}

func (k explainKV) Txn(ctx context.Context) clientv3.Txn {
	return explainTxn{Txn: k.KV.Txn(ctx), rec: k.rec}
}

// explainTxn explains Commit's error; If/Then/Else return the wrapper again.
type explainTxn struct {
	clientv3.Txn
	rec *connRecorder
}

func (t explainTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	return explainTxn{Txn: t.Txn.If(cs...), rec: t.rec}
}
func (t explainTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	return explainTxn{Txn: t.Txn.Then(ops...), rec: t.rec}
}
func (t explainTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	return explainTxn{Txn: t.Txn.Else(ops...), rec: t.rec}
}
func (t explainTxn) Commit() (*clientv3.TxnResponse, error) {
	r, err := t.Txn.Commit()
	return r, t.rec.explain(err)
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
