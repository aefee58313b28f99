package k8ssource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// health tracks whether the API server answers each informer. The informers'
// ListerWatcher (retryLW) records every failed List/Watch and decides when a resource
// is answered again (after a relist, not on the first 200); the client's transport
// adds what neither sees: a watch stream broken mid-body (API server killed,
// connection reset) is a failure at once, not only when the next request fails.
type health struct {
	mu     sync.Mutex
	state  map[string]error // resource -> last outcome (nil = ok); absent = no answer yet
	notify chan struct{}    // cap 1: "state changed"
}

func newHealth() *health {
	return &health{state: make(map[string]error), notify: make(chan struct{}, 1)}
}

// set records an outcome for a resource and pokes the loop when it changes.
func (h *health) set(resource string, err error) {
	h.mu.Lock()
	old, seen := h.state[resource]
	changed := !seen || (old == nil) != (err == nil) || (old != nil && err != nil && old.Error() != err.Error())
	h.state[resource] = err
	h.mu.Unlock()
	if changed {
		select {
		case h.notify <- struct{}{}:
		default:
		}
	}
}

// ok reports whether the resource has answered and its last outcome was a success.
func (h *health) ok(resource string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	err, seen := h.state[resource]
	return seen && err == nil
}

// status returns the first failure (nil when every resource has answered and none
// failed) and whether every expected resource has answered at least once.
func (h *health) status(resources []string) (err error, answered bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	answered = true
	for _, r := range resources {
		e, ok := h.state[r]
		if !ok {
			answered = false
			continue
		}
		if e != nil && err == nil {
			err = e
		}
	}
	return err, answered
}

// resourceOf maps a request path to the informer it serves ("" = not ours).
func resourceOf(path string) string {
	switch {
	case strings.HasSuffix(path, "/endpointslices"):
		return resEndpointSlices
	case strings.HasSuffix(path, "/nodes"):
		return resNodes
	case strings.HasSuffix(path, "/services"):
		return resServices
	case strings.HasSuffix(path, "/pods"):
		return resPods
	}
	return ""
}

// transport observes the API responses of the source's client for broken watch
// streams (successes and failed requests are the ListerWatcher's to judge).
type transport struct {
	next http.RoundTripper
	h    *health
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if res := resourceOf(req.URL.Path); res != "" && err == nil && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		resp.Body = &body{ReadCloser: resp.Body, req: req, res: res, h: t.h}
	}
	return resp, err
}

// body watches a response stream: a watch that breaks mid-stream (API server killed,
// connection reset) is a failure until the next successful request.
type body struct {
	io.ReadCloser
	req    *http.Request
	res    string
	h      *health
	closed atomic.Bool // closed by the client (watch stopped): later read errors are ours
}

func (b *body) Close() error {
	b.closed.Store(true)
	return b.ReadCloser.Close()
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && !b.closed.Load() && b.req.Context().Err() == nil && !errors.Is(err, context.Canceled) {
		b.h.set(b.res, fmt.Errorf("reading %s: %w", b.req.URL.Path, err))
	}
	return n, err
}
