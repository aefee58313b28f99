package k8ssource

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/config"
)

// TestTransportHealth drives the transport observer with a real HTTP server: a watch
// stream cut mid-body is a failure at once; answers themselves are the
// ListerWatcher's to judge (TestRetryLW).
func TestTransportHealth(t *testing.T) {
	var status int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status == -1 { // a watch stream cut mid-body
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("partial"))
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()

	tests := []struct {
		name   string
		status int
		path   string
		want   string // "" = healthy, else a substring of the failure
	}{
		{"list ok", 200, "/api/v1/nodes", ""},
		{"a refusal is not the transport's to judge", 403, "/api/v1/nodes", ""},
		{"stream cut", -1, "/api/v1/nodes", "reading /api/v1/nodes"},
		{"stream cut, endpointslices", -1, "/apis/discovery.k8s.io/v1/namespaces/x/endpointslices", "reading /apis/discovery.k8s.io/v1/namespaces/x/endpointslices"},
	}
	h := newHealth()
	tr := &transport{next: http.DefaultTransport, h: h}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status = tt.status
			h.set(resNodes, nil)
			h.set(resEndpointSlices, nil)
			req, _ := http.NewRequest(http.MethodGet, srv.URL+tt.path, nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got, _ := h.status([]string{resNodes, resEndpointSlices})
			if (got == nil) != (tt.want == "") || (got != nil && !strings.Contains(got.Error(), tt.want)) {
				t.Fatalf("health = %v, want %q", got, tt.want)
			}
		})
	}

	t.Run("closing a watch ourselves is not a failure", func(t *testing.T) {
		status = 200
		h.set(resNodes, nil)
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/nodes?watch=1", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		_, _ = resp.Body.Read(make([]byte, 10))
		if err, _ := h.status([]string{resNodes}); err != nil {
			t.Fatalf("health = %v after our own close", err)
		}
	})
}

// TestUnreachableAtStart: an API server that is not there gives Failed, connected 0,
// and no Update (an empty set would depool everything).
func TestUnreachableAtStart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://`+addr+`", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: gone, context: {cluster: c, user: u}}]
current-context: gone
`), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	src, err := New("k8s://gone?endpoints=ns/gw", config.Global{Kubeconfig: kc}, &config.Service{Name: "gone"}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- src.Run(ctx, rec) }()
	ferr := rec.waitFailed(t, 10*time.Second, true)
	if !strings.Contains(ferr.Error(), "refused") || !strings.Contains(ferr.Error(), "k8s://gone") {
		t.Errorf("Failed(%v): want the source URL and connection refused", ferr)
	}
	if v := gauge(t, reg, "kubal_k8s_source_connected"); v != 0 {
		t.Errorf("connected = %v", v)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, n, _ := rec.snapshot(); n != 0 {
		t.Fatalf("%d Updates from an unreachable API server", n)
	}
}

func TestNewErrors(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: ok, context: {cluster: c, user: u}}]
current-context: ok
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		url     string
		g       config.Global
		svc     config.Service
		wantErr string
	}{
		{url: "k8s://", g: config.Global{Kubeconfig: kc}, svc: config.Service{Name: "s"}},
		{url: "k8s://ok", g: config.Global{Kubeconfig: kc}, svc: config.Service{Name: "s", K8sCordoned: "keep"}},
		{url: "k8s://missing", g: config.Global{Kubeconfig: kc}, svc: config.Service{Name: "s"}, wantErr: `context "missing"`},
		{url: "k8s://", g: config.Global{Kubeconfig: kc + ".nope"}, svc: config.Service{Name: "s"}, wantErr: "[global] kubeconfig"},
		{url: "k8s://", g: config.Global{Kubeconfig: kc}, svc: config.Service{Name: "s", K8sCordoned: "drain"}, wantErr: `k8s-cordoned = "drain"`},
		{url: "k8s://?bogus=1", g: config.Global{Kubeconfig: kc}, svc: config.Service{Name: "s"}, wantErr: "unknown parameter"},
	}
	for _, tt := range tests {
		t.Run(tt.url+tt.wantErr, func(t *testing.T) {
			_, err := New(tt.url, tt.g, &tt.svc, nil, prometheus.NewRegistry())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	// Two sources of one service in one registry (a reload) share the series.
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := New("k8s://", config.Global{Kubeconfig: kc}, &config.Service{Name: "s"}, nil, reg); err != nil {
			t.Fatal(err)
		}
	}
}
