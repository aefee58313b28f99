package conftool

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/kubal/kubal/config"
)

// writeCert issues a certificate signed by ca (self-signed when ca is nil) and writes
// PEM cert and key files under dir.
func writeCert(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, isCA bool, ext x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	if !isCA {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{ext}
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key, certFile, keyFile
}

// [global] etcd-ca/etcd-cert/etcd-key against a real etcd that requires client
// certificates: with them the source works; without the client cert it cannot read.
func TestNewClientTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, caFile, _ := writeCert(t, dir, "ca", nil, nil, true, 0)
	_, _, srvCert, srvKey := writeCert(t, dir, "server", ca, caKey, false, x509.ExtKeyUsageServerAuth)
	_, _, cliCert, cliKey := writeCert(t, dir, "client", ca, caKey, false, x509.ExtKeyUsageClientAuth)

	ms := newMembers(t, 1)
	m := ms[0]
	m.clientURL = url.URL{Scheme: "https", Host: m.clientURL.Host}
	m.tls = &transport.TLSInfo{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: caFile, ClientCertAuth: true}
	m.start(t)
	t.Cleanup(m.stop)
	m.waitReady(t)

	g := config.Global{EtcdEndpoints: []string{m.clientURL.Host}, EtcdCA: caFile, EtcdCert: cliCert, EtcdKey: cliKey}
	cli, err := NewClient(g, nil, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, testPrefix+"a", `{"pooled": "yes"}`); err != nil {
		t.Fatalf("mTLS put: %v", err)
	}

	// Same CA, no client certificate: the server refuses.
	noCert, err := NewClient(config.Global{EtcdEndpoints: []string{"https://" + m.clientURL.Host}, EtcdCA: caFile}, nil, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer noCert.Close()
	// 5 s: time for the refused handshake to surface as the error (1 s ran out under
	// load on 2 cores and left only "context deadline exceeded").
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := noCert.Get(ctx2, testPrefix+"a"); err == nil {
		t.Fatal("read without a client certificate succeeded; want refused")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without client cert: %v; want the TLS reason", err)
	} else {
		t.Logf("without client cert: %v", fmt.Sprint(err))
	}

	// A CA that did not sign the server's certificate: the error gives the x509
	// reason, not only "context deadline exceeded" (issue 19), and is still a
	// deadline error for callers that test for one.
	_, _, otherCAFile, _ := writeCert(t, dir, "other-ca", nil, nil, true, 0)
	wrongCA, err := NewClient(config.Global{EtcdEndpoints: []string{"https://" + m.clientURL.Host}, EtcdCA: otherCAFile,
		EtcdCert: cliCert, EtcdKey: cliKey}, nil, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer wrongCA.Close()
	ctx3, cancel3 := context.WithTimeout(context.Background(), 3*time.Second) // it lasts the whole deadline
	defer cancel3()
	_, err = wrongCA.Get(ctx3, testPrefix+"a")
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "x509") {
		t.Fatalf("wrong CA: got %v, want a deadline error naming the x509 failure", err)
	}
	t.Logf("wrong CA: %v", err)
	ctx4, cancel4 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel4()
	if _, err := wrongCA.Txn(ctx4).If().Then(clientv3.OpGet(testPrefix + "a")).Commit(); err == nil || !strings.Contains(err.Error(), "x509") {
		t.Fatalf("wrong CA txn: %v", err)
	}
}
