package api

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

// Auth identifies admin clients by bearer token or by a verified mTLS client
// certificate. The zero Auth (LoadAuth("")) knows no tokens and accepts only
// certificates. Its tokens can be re-read (Reload, on SIGHUP) while requests are
// being served.
type Auth struct {
	path   string
	tokens atomic.Pointer[[]token] // replaced whole by Reload; never modified

	mu  sync.Mutex // serialises Reload
	err atomic.Pointer[error]
}

type token struct {
	name string
	sum  [sha256.Size]byte // tokens are compared as hashes, in constant time
}

// LoadAuth reads admin-token-file: one "name:token" per line; blank lines and lines
// starting with # are ignored. The name is what the audit log records. An empty path
// gives an Auth that accepts only mTLS client certificates. Errors name file:line and
// never contain a token.
func LoadAuth(tokenFile string) (*Auth, error) {
	a := &Auth{path: tokenFile}
	if tokenFile == "" {
		return a, nil
	}
	toks, err := readTokens(tokenFile)
	if err != nil {
		return nil, err
	}
	a.tokens.Store(&toks)
	return a, nil
}

// Reload re-reads the token file: tokens removed from it stop working, new ones work,
// from the next request on. On error (a missing or malformed file) the tokens in
// force stay, and the error is returned and kept for Err until a reload succeeds.
// Safe for concurrent use with requests. An Auth without a token file has nothing
// to reload.
func (a *Auth) Reload() error {
	if a == nil || a.path == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	toks, err := readTokens(a.path)
	if err != nil {
		a.err.Store(&err)
		return err
	}
	a.tokens.Store(&toks)
	a.err.Store(nil)
	return nil
}

// Err is the error of the last Reload (nil when it succeeded): the daemon shows it in
// /alerts, since the tokens in force are then older than the file.
func (a *Auth) Err() error {
	if a == nil {
		return nil
	}
	if e := a.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (a *Auth) list() []token {
	if a == nil {
		return nil
	}
	if p := a.tokens.Load(); p != nil {
		return *p
	}
	return nil
}

func readTokens(tokenFile string) ([]token, error) {
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("admin-token-file: %w", err)
	}
	var toks []token
	names := map[string]int{}
	sums := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		name, tok = strings.TrimSpace(name), strings.TrimSpace(tok)
		switch {
		case !ok:
			return nil, fmt.Errorf("%s:%d: want name:token", tokenFile, n)
		case name == "":
			return nil, fmt.Errorf("%s:%d: empty name", tokenFile, n)
		case tok == "":
			return nil, fmt.Errorf("%s:%d: empty token for %q", tokenFile, n, name)
		case len(tok) < 16:
			return nil, fmt.Errorf("%s:%d: token for %q is shorter than 16 characters", tokenFile, n, name)
		}
		if prev, dup := names[name]; dup {
			return nil, fmt.Errorf("%s:%d: name %q already used on line %d", tokenFile, n, name, prev)
		}
		sum := sha256.Sum256([]byte(tok))
		if prev, dup := sums[sum]; dup {
			return nil, fmt.Errorf("%s:%d: token of %q repeats the token on line %d", tokenFile, n, name, prev)
		}
		names[name], sums[sum] = n, n
		toks = append(toks, token{name: name, sum: sum})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("admin-token-file %s: %w", tokenFile, err)
	}
	return toks, nil
}

// Tokens returns how many tokens are configured.
func (a *Auth) Tokens() int { return len(a.list()) }

var (
	errNoCredentials = errors.New("missing credentials: send Authorization: Bearer <token> or a client certificate")
	errBadToken      = errors.New("invalid token")
)

// identify returns the actor of r: the token's name, or "cert:<CN>" for a verified
// client certificate. errNoCredentials means 401, errBadToken 403. A bearer token, when
// sent, must be valid even if a certificate is also presented.
func (a *Auth) identify(r *http.Request) (string, error) {
	if hdr := r.Header.Get("Authorization"); hdr != "" {
		scheme, tok, _ := strings.Cut(hdr, " ")
		if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", errNoCredentials
		}
		toks := a.list() // one consistent set for this request, even during a Reload
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		found := -1
		for i := range toks { // no early exit: the time does not depend on the match
			if subtle.ConstantTimeCompare(sum[:], toks[i].sum[:]) == 1 {
				found = i
			}
		}
		if found < 0 {
			return "", errBadToken
		}
		return toks[found].name, nil
	}
	// VerifiedChains is only set when the listener verified the client against
	// admin-client-ca (TLSConfig), so its presence is the proof.
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		return "cert:" + certName(r.TLS.VerifiedChains[0][0]), nil
	}
	return "", errNoCredentials
}

func certName(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return c.Subject.String()
}

// TLSConfig builds the admin listener's TLS config from admin-tls-cert/-key and, when
// clientCA is set, admin-client-ca: client certificates are then verified against it
// and accepted as identity. A client without a certificate can still use a token.
func TLSConfig(cert, key, clientCA string) (*tls.Config, error) {
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("admin-tls-cert %s / admin-tls-key %s: %w", cert, key, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{kp},
	}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("admin-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("admin-client-ca %s: no PEM certificate found", clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}
