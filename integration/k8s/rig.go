// Package k8s is the Kubernetes test rig: a real etcd and a real kube-apiserver,
// each its own process, built once by setup.sh and cached under
// $KUBAL_CACHE/k8s/ keyed by version. No kubelet, scheduler or controller-manager run:
// tests create and change Nodes and EndpointSlices through the API themselves, so
// nothing else rewrites them.
package k8s

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubal/kubal/internal/testutil"
)

// Versions built by setup.sh.
const (
	KubeVersion = "v1.36.3"
	EtcdVersion = "v3.6.16"
)

// AdminToken is the static token of the rig's cluster-admin (group system:masters).
const AdminToken = "kubal-rig-admin-token"

// CacheDir is where setup.sh puts the binaries.
func CacheDir() string {
	c := os.Getenv("KUBAL_CACHE")
	if c == "" {
		home, _ := os.UserHomeDir()
		c = filepath.Join(home, ".cache", "kubal")
	}
	return filepath.Join(c, "k8s")
}

// Binaries returns the cached kube-apiserver and etcd, or an error saying how to build
// them.
func Binaries() (apiserver, etcd string, err error) {
	apiserver = filepath.Join(CacheDir(), "kube-apiserver-"+KubeVersion)
	etcd = filepath.Join(CacheDir(), "etcd-"+EtcdVersion)
	for _, b := range []string{apiserver, etcd} {
		if fi, err := os.Stat(b); err != nil || fi.Mode()&0o111 == 0 {
			return "", "", fmt.Errorf("k8s rig binary %s missing: run integration/k8s/setup.sh (or make setup)", b)
		}
	}
	return apiserver, etcd, nil
}

// Required reports whether missing rigs must fail tests (KUBAL_REQUIRE_RIGS=1).
func Required() bool { return os.Getenv("KUBAL_REQUIRE_RIGS") == "1" }

// SkipOrFail skips t loudly because the rig is unavailable, or fails it when rigs are
// required.
func SkipOrFail(t testing.TB, why error) {
	t.Helper()
	if Required() {
		t.Fatalf("KUBAL_REQUIRE_RIGS=1 and the k8s rig is unavailable: %v", why)
	}
	t.Skipf("SKIPPING: k8s rig unavailable (real kube-apiserver + etcd): %v", why)
}

// Token is an extra static bearer token: a user the API server knows, e.g.
// "system:serviceaccount:<ns>:<name>" to exercise RBAC bound to a ServiceAccount.
type Token struct {
	Token  string
	User   string
	Groups []string
}

// Rig is a running etcd + kube-apiserver.
type Rig struct {
	dir       string
	apiBin    string
	etcdURL   string
	port      int
	etcd      *proc
	apiserver *proc
	// Host is the API server URL (https://127.0.0.1:<port>).
	Host string
	// Kubeconfig is a kubeconfig file for the admin token (context "rig").
	Kubeconfig string
}

// Start runs etcd and kube-apiserver with the given extra tokens, authorization by
// RBAC, and waits until /readyz answers. Close stops both and removes the state.
func Start(ctx context.Context, tokens ...Token) (r *Rig, err error) {
	apiBin, etcdBin, err := Binaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kubal-k8s-rig-")
	if err != nil {
		return nil, err
	}
	r = &Rig{dir: dir, apiBin: apiBin}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if err := r.writeSecrets(tokens); err != nil {
		return nil, err
	}
	ports, err := testutil.Ports(3) // below the ephemeral range: the API server restarts on its port
	if err != nil {
		return nil, err
	}
	r.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	r.port = ports[2]
	r.Host = fmt.Sprintf("https://127.0.0.1:%d", r.port)

	r.etcd, err = startProc(etcdBin, filepath.Join(dir, "etcd.log"),
		"-data-dir="+filepath.Join(dir, "etcd"), "-listen-client="+r.etcdURL, "-listen-peer="+peer,
		// Test data only: durability across host crashes is irrelevant, write speed is not.
		"-unsafe-no-fsync")
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, r.etcd, r.etcdURL+"/health", "", 30*time.Second); err != nil {
		return nil, fmt.Errorf("etcd: %w\n%s", err, r.etcd.tail())
	}
	if err := r.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	r.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := r.WriteKubeconfig(r.Kubeconfig, "rig", AdminToken); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Rig) writeSecrets(tokens []Token) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.dir, "sa.key"),
		pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.dir, "sa.pub"),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s,kubal-rig-admin,uid-admin,\"system:masters\"\n", AdminToken)
	for i, t := range tokens {
		fmt.Fprintf(&b, "%s,%s,uid-%d,\"%s\"\n", t.Token, t.User, i, strings.Join(t.Groups, ","))
	}
	return os.WriteFile(filepath.Join(r.dir, "tokens.csv"), []byte(b.String()), 0o600)
}

// StartAPIServer (re)starts kube-apiserver on the rig's port and waits for /readyz.
func (r *Rig) StartAPIServer(ctx context.Context) error {
	if r.apiserver != nil && r.apiserver.running() {
		return errors.New("kube-apiserver already running")
	}
	var err error
	r.apiserver, err = startProc(r.apiBin, filepath.Join(r.dir, "kube-apiserver.log"),
		"--etcd-servers="+r.etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(r.port),
		"--cert-dir="+filepath.Join(r.dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(r.dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(r.dir, "sa.key"),
		"--token-auth-file="+filepath.Join(r.dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		// Room for the 1,000 LoadBalancer Services of BenchmarkK8sServices.
		"--service-cluster-ip-range=10.96.0.0/20,fd00:10:96::/112", // dual-stack: Services may ask for both families
		"--profiling=false")
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, r.apiserver, r.Host+"/readyz", AdminToken, 60*time.Second); err != nil {
		return fmt.Errorf("kube-apiserver: %w\n%s", err, r.apiserver.tail())
	}
	return nil
}

// StopAPIServer kills kube-apiserver (as a crash or a lost host would: no graceful
// goodbye to watchers) and waits for it to exit. etcd keeps running.
func (r *Rig) StopAPIServer() error {
	if r.apiserver == nil {
		return nil
	}
	return r.apiserver.stop(syscall.SIGKILL, 0)
}

// APIServerPID is the running kube-apiserver's process id (0 when stopped).
func (r *Rig) APIServerPID() int {
	if r.apiserver == nil || !r.apiserver.running() {
		return 0
	}
	return r.apiserver.cmd.Process.Pid
}

// Close stops both servers and removes their state.
func (r *Rig) Close() error {
	var errs []error
	if r.apiserver != nil {
		errs = append(errs, r.apiserver.stop(syscall.SIGTERM, 10*time.Second))
	}
	if r.etcd != nil {
		errs = append(errs, r.etcd.stop(syscall.SIGTERM, 10*time.Second))
	}
	errs = append(errs, os.RemoveAll(r.dir))
	return errors.Join(errs...)
}

// Logs returns the tail of the servers' logs, for failure messages.
func (r *Rig) Logs() string {
	var b strings.Builder
	if r.etcd != nil {
		b.WriteString("--- etcd\n" + r.etcd.tail())
	}
	if r.apiserver != nil {
		b.WriteString("--- kube-apiserver\n" + r.apiserver.tail())
	}
	return b.String()
}

// caFile is the API server's self-signed serving bundle (cert + its CA).
func (r *Rig) caFile() string { return filepath.Join(r.dir, "certs", "apiserver.crt") }

// RESTConfig is a client config authenticating with a bearer token, verifying the
// API server's certificate.
func (r *Rig) RESTConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            r.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: r.caFile()},
		QPS:             1000,
		Burst:           2000,
	}
}

// Client is an admin clientset.
func (r *Rig) Client() (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(r.RESTConfig(AdminToken))
}

// WriteKubeconfig writes a kubeconfig with one context (name) for a token.
func (r *Rig) WriteKubeconfig(path, name, token string) error {
	ca, err := os.ReadFile(r.caFile())
	if err != nil {
		return err
	}
	c := clientcmdapi.NewConfig()
	c.Clusters["rig"] = &clientcmdapi.Cluster{Server: r.Host, CertificateAuthorityData: ca}
	c.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	c.Contexts[name] = &clientcmdapi.Context{Cluster: "rig", AuthInfo: name}
	c.CurrentContext = name
	return clientcmd.WriteToFile(*c, path)
}

// proc is one child server process; it is always waited for.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startProc(bin, logPath string, args ...string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Do not outlive a crashed test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop signals the process and waits; after grace (0: none) it is killed.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	if !p.running() {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-p.done:
			return nil
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
		}
	}
	<-p.done
	return nil
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func waitHTTP(ctx context.Context, p *proc, url, token string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Readiness probe only: the clients under test verify the certificate.
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // readiness probe of a local test server
	}}
	defer c.CloseIdleConnections()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err == nil {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: HTTP %d: %.200s", url, resp.StatusCode, body.String())
		}
		last = err
		if !p.running() {
			return fmt.Errorf("exited (%v) before ready; last probe: %v", p.err, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %v", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
