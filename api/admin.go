package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubal/kubal/source"
)

// Admin request limits.
const (
	MaxBodyBytes  = 64 << 10
	MaxReasonLen  = 1024
	MaxWeight     = 65535 // ipvsadm's limit
	applyDeadline = 30 * time.Second
)

// AdminMetrics counts admin requests: kubal_admin_actions_total{op,result}.
type AdminMetrics struct {
	actions *prometheus.CounterVec
}

// Results recorded in kubal_admin_actions_total.
var adminResults = []string{"ok", "refused", "not_found", "bad_request", "unauthorized", "forbidden", "error"}

// NewAdminMetrics creates the admin counters and registers them on reg (when not nil).
// Calling it again on the same registry (a rebuilt admin handler) shares the counters.
func NewAdminMetrics(reg prometheus.Registerer) *AdminMetrics {
	m := &AdminMetrics{actions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kubal_admin_actions_total",
		Help: "Admin API requests by operation and result (ok, refused, not_found, bad_request, unauthorized, forbidden, error).",
	}, []string{"op", "result"})}
	for _, op := range []Op{OpPool, OpDepool, OpWeight, OpClear, OpConfirmRemoval} {
		for _, res := range adminResults {
			m.actions.WithLabelValues(string(op), res)
		}
	}
	if reg != nil {
		if err := reg.Register(m.actions); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err) // a different metric with our name: a programming error
			}
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				m.actions = existing
			}
		}
	}
	return m
}

func (m *AdminMetrics) inc(op Op, result string) {
	if m != nil {
		m.actions.WithLabelValues(string(op), result).Inc()
	}
}

// AdminOption configures NewAdmin.
type AdminOption func(*admin)

// WithMetrics counts every admin request in m.
func WithMetrics(m *AdminMetrics) AdminOption { return func(a *admin) { a.metrics = m } }

// NewAdmin returns the admin listener's handler:
//
//	POST /pools/<pool>/<host>/depool   body (optional) {"reason": "...", "force": true}
//	POST /pools/<pool>/<host>/pool     body (optional) {"reason": "..."}
//	PUT  /pools/<pool>/<host>/weight   body {"weight": N, "reason": "..."}
//	POST /pools/<pool>/confirm-removal body (optional) {"reason": "..."}: apply the
//	     server-list update held for removing too many servers at once (needs an
//	     Admin that is a RemovalConfirmer; 409 when nothing is held)
//
// Every admin request must say Content-Type: application/json, even without a body
// (415 otherwise), so that no cross-site form or no-cors fetch can act with a
// browser's client certificate.
//
// plus every read-only endpoint of NewInstrumentation except /metrics (GET, no
// authentication: the same data is public on the instrumentation listener). Admin
// requests need a bearer token or a verified client certificate (auth: 401 without,
// 403 for a wrong token). Actions are applied one at a time, so two concurrent depools
// cannot both pass the depool threshold. Every request is audited through log.
func NewAdmin(st State, adm Admin, auth *Auth, log *slog.Logger, opts ...AdminOption) http.Handler {
	a := &admin{read: reader{st: st, cache: &renderCache{}}, adm: adm, auth: auth, log: log, sem: make(chan struct{}, 1)}
	for _, o := range opts {
		o(a)
	}
	return a
}

type admin struct {
	read    reader
	adm     Admin
	auth    *Auth
	log     *slog.Logger
	metrics *AdminMetrics
	sem     chan struct{} // serialises Apply
}

// ErrorResponse is the body of every admin error. Field names the request field at
// fault, when there is one.
type ErrorResponse struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// ActionResult is the body of a successful admin request.
type ActionResult struct {
	Pool   string       `json:"pool"`
	Host   string       `json:"host"`
	Op     Op           `json:"op"`
	Weight *int         `json:"weight,omitempty"`
	Reason string       `json:"reason,omitempty"`
	Force  bool         `json:"force,omitempty"`
	Actor  string       `json:"actor"`
	Old    ServerStatus `json:"old"`
	New    ServerStatus `json:"new"`
}

// actionBody is the admin request body; unknown fields are rejected.
type actionBody struct {
	Weight *int   `json:"weight"`
	Reason string `json:"reason"`
	Force  bool   `json:"force"`
}

func (a *admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	segs, ok := segments(r)
	if ok && len(segs) == 3 && segs[0] == "pools" && segs[2] == string(OpConfirmRemoval) && r.Method != http.MethodGet && r.Method != http.MethodHead {
		a.confirmRemoval(w, r, segs[1])
		return
	}
	if ok && len(segs) == 4 && segs[0] == "pools" {
		switch op := Op(segs[3]); op {
		case OpPool, OpDepool, OpWeight, OpClear:
			a.action(w, r, op, segs[1], segs[2])
			return
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, ErrorResponse{Error: "method " + r.Method + " not allowed here"})
		return
	}
	if r.URL.Path == "/healthz" {
		writeBody(w, http.StatusOK, "text/plain", []byte("ok\n"))
		return
	}
	if !a.read.serve(w, r) {
		a.read.notFound(w, r)
	}
}

func (a *admin) action(w http.ResponseWriter, r *http.Request, op Op, poolName, host string) {
	method := http.MethodPost
	if op == OpWeight {
		method = http.MethodPut
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		a.fail(w, r, op, "bad_request", http.StatusMethodNotAllowed, ErrorResponse{Error: fmt.Sprintf("%s needs %s, not %s", op, method, r.Method)}, "")
		return
	}
	actor, ok := a.authorize(w, r, op)
	if !ok {
		return
	}
	if !validName(poolName) {
		a.fail(w, r, op, "not_found", http.StatusNotFound, ErrorResponse{Error: "no such pool", Field: "pool"}, actor)
		return
	}
	if err := source.CheckHost(host); err != nil {
		// The same rule as every server list: no server can have this name.
		a.fail(w, r, op, "not_found", http.StatusNotFound, ErrorResponse{Error: "no such host: " + err.Error(), Field: "host"}, actor)
		return
	}
	if !a.jsonContent(w, r, op, actor) {
		return
	}
	body, eresp, code := readBody(w, r, op)
	if eresp != nil {
		a.fail(w, r, op, "bad_request", code, *eresp, actor)
		return
	}
	snap, ok := a.read.st.Snapshot(poolName)
	if !ok {
		a.fail(w, r, op, "not_found", http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no pool %q", poolName), Field: "pool"}, actor)
		return
	}
	if _, ok := snap.Server(host); !ok {
		a.fail(w, r, op, "not_found", http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no host %q in pool %q", host, poolName), Field: "host"}, actor)
		return
	}
	act := Action{Pool: poolName, Host: host, Op: op, Reason: body.Reason, Force: body.Force, Actor: actor}
	if body.Weight != nil {
		act.Weight = *body.Weight
	}

	ctx, cancel := context.WithTimeout(r.Context(), applyDeadline)
	defer cancel()
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		a.fail(w, r, op, "error", http.StatusServiceUnavailable, ErrorResponse{Error: "gave up waiting for another admin action: " + ctx.Err().Error()}, actor)
		return
	}
	out, err := a.adm.Apply(ctx, act)
	<-a.sem

	log := a.log.With("actor", actor, "op", string(op), "pool", poolName, "host", host,
		"reason", act.Reason, "force", act.Force, "remote", r.RemoteAddr)
	if op == OpWeight {
		log = log.With("weight", act.Weight)
	}
	if err != nil {
		code, result := http.StatusInternalServerError, "error"
		switch {
		case errors.Is(err, ErrNotFound):
			code, result = http.StatusNotFound, "not_found"
		case errors.Is(err, ErrThreshold), errors.Is(err, ErrConflict):
			code, result = http.StatusConflict, "refused"
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			code = http.StatusServiceUnavailable
		}
		log.Warn("admin action failed", "result", result, "error", err.Error())
		a.metrics.inc(op, result)
		msg := err.Error()
		if result == "refused" && errors.Is(err, ErrThreshold) && !act.Force {
			msg += " (send \"force\": true to override)"
		}
		writeJSON(w, code, ErrorResponse{Error: msg})
		return
	}
	log.Info("admin action",
		"result", "ok",
		"old", out.Old.TextStatus(), "old_weight", out.Old.Weight,
		"new", out.New.TextStatus(), "new_weight", out.New.Weight)
	a.metrics.inc(op, "ok")
	res := ActionResult{Pool: poolName, Host: host, Op: op, Reason: act.Reason, Force: act.Force,
		Actor: actor, Old: NewServerStatus(out.Old), New: NewServerStatus(out.New)}
	if op == OpWeight {
		res.Weight = &act.Weight
	}
	writeJSON(w, http.StatusOK, res)
}

// authorize identifies the client; on failure it has answered 401 or 403.
func (a *admin) authorize(w http.ResponseWriter, r *http.Request, op Op) (string, bool) {
	actor, err := a.auth.identify(r)
	if err == nil {
		return actor, true
	}
	if errors.Is(err, errBadToken) {
		a.fail(w, r, op, "forbidden", http.StatusForbidden, ErrorResponse{Error: err.Error(), Field: "Authorization"}, "")
		return "", false
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="kubal"`)
	a.fail(w, r, op, "unauthorized", http.StatusUnauthorized, ErrorResponse{Error: err.Error(), Field: "Authorization"}, "")
	return "", false
}

// jsonContent refuses (415) a request that does not declare a JSON body. A browser
// cannot send this type cross-site without a CORS preflight, which kubal never
// answers: a form post riding on a client certificate is refused.
func (a *admin) jsonContent(w http.ResponseWriter, r *http.Request, op Op, actor string) bool {
	if isJSONContent(r) {
		return true
	}
	a.fail(w, r, op, "bad_request", http.StatusUnsupportedMediaType,
		ErrorResponse{Error: "admin requests need Content-Type: application/json (with or without a body)", Field: "Content-Type"}, actor)
	return false
}

// ConfirmResult is the body of a successful confirm-removal request.
type ConfirmResult struct {
	Pool   string `json:"pool"`
	Op     Op     `json:"op"`
	Reason string `json:"reason,omitempty"`
	Actor  string `json:"actor"`
}

// confirmRemoval serves POST /pools/<pool>/confirm-removal: apply the server-list
// update held for removing too many servers at once, now.
func (a *admin) confirmRemoval(w http.ResponseWriter, r *http.Request, poolName string) {
	const op = OpConfirmRemoval
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		a.fail(w, r, op, "bad_request", http.StatusMethodNotAllowed, ErrorResponse{Error: fmt.Sprintf("%s needs POST, not %s", op, r.Method)}, "")
		return
	}
	actor, ok := a.authorize(w, r, op)
	if !ok || !a.jsonContent(w, r, op, actor) {
		return
	}
	if _, known := a.read.st.Snapshot(poolName); !known || !validName(poolName) {
		a.fail(w, r, op, "not_found", http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no pool %q", poolName), Field: "pool"}, actor)
		return
	}
	body, eresp, code := readBody(w, r, op)
	if eresp != nil {
		a.fail(w, r, op, "bad_request", code, *eresp, actor)
		return
	}
	rc, ok := a.adm.(RemovalConfirmer)
	if !ok {
		a.fail(w, r, op, "error", http.StatusNotImplemented, ErrorResponse{Error: "this kubal cannot confirm held removals"}, actor)
		return
	}
	held, err := rc.ConfirmRemoval(r.Context(), poolName, actor)
	log := a.log.With("actor", actor, "op", string(op), "pool", poolName, "reason", body.Reason, "remote", r.RemoteAddr)
	switch {
	case err != nil:
		log.Warn("admin action failed", "result", "error", "error", err.Error())
		a.metrics.inc(op, "error")
		writeJSON(w, http.StatusInternalServerError, ErrorResponse{Error: err.Error()})
		return
	case !held:
		a.fail(w, r, op, "refused", http.StatusConflict, ErrorResponse{Error: fmt.Sprintf("pool %q has no held server-list update", poolName)}, actor)
		return
	}
	log.Info("admin action", "result", "ok")
	a.metrics.inc(op, "ok")
	writeJSON(w, http.StatusOK, ConfirmResult{Pool: poolName, Op: op, Reason: body.Reason, Actor: actor})
}

// fail answers an admin request that was refused before Apply, and audits it.
func (a *admin) fail(w http.ResponseWriter, r *http.Request, op Op, result string, code int, e ErrorResponse, actor string) {
	// Never log the Authorization header or the body: they may hold a token.
	a.log.Warn("admin request refused", "op", string(op), "path", r.URL.Path, "method", r.Method,
		"actor", actor, "remote", r.RemoteAddr, "status", code, "result", result, "error", e.Error)
	a.metrics.inc(op, result)
	writeJSON(w, code, e)
}

// readBody decodes and validates the optional JSON body.
func readBody(w http.ResponseWriter, r *http.Request, op Op) (actionBody, *ErrorResponse, int) {
	var body actionBody
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return body, &ErrorResponse{Error: fmt.Sprintf("request body larger than %d bytes", MaxBodyBytes), Field: "body"}, http.StatusRequestEntityTooLarge
		}
		return body, &ErrorResponse{Error: "reading request body: " + err.Error(), Field: "body"}, http.StatusBadRequest
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			return body, &ErrorResponse{Error: "malformed JSON body: " + describeJSONError(err), Field: jsonErrorField(err)}, http.StatusBadRequest
		}
		if dec.More() {
			return body, &ErrorResponse{Error: "malformed JSON body: data after the JSON object", Field: "body"}, http.StatusBadRequest
		}
		if _, err := dec.Token(); err != io.EOF {
			return body, &ErrorResponse{Error: "malformed JSON body: data after the JSON object", Field: "body"}, http.StatusBadRequest
		}
	}
	switch {
	case op == OpWeight && body.Weight == nil:
		return body, &ErrorResponse{Error: `missing "weight" (an integer 0..65535)`, Field: "weight"}, http.StatusBadRequest
	case op == OpWeight && (*body.Weight < 0 || *body.Weight > MaxWeight):
		return body, &ErrorResponse{Error: fmt.Sprintf(`"weight" %d is out of range 0..%d`, *body.Weight, MaxWeight), Field: "weight"}, http.StatusBadRequest
	case op != OpWeight && body.Weight != nil:
		return body, &ErrorResponse{Error: fmt.Sprintf(`"weight" is not allowed for %s; use PUT .../weight`, op), Field: "weight"}, http.StatusBadRequest
	case op != OpDepool && body.Force:
		return body, &ErrorResponse{Error: fmt.Sprintf(`"force" only applies to depool, not %s`, op), Field: "force"}, http.StatusBadRequest
	case len(body.Reason) > MaxReasonLen:
		return body, &ErrorResponse{Error: fmt.Sprintf(`"reason" is longer than %d bytes`, MaxReasonLen), Field: "reason"}, http.StatusBadRequest
	case !utf8.ValidString(body.Reason) || strings.IndexFunc(body.Reason, unicode.IsControl) >= 0:
		return body, &ErrorResponse{Error: `"reason" must be printable text without control characters`, Field: "reason"}, http.StatusBadRequest
	}
	return body, nil, 0
}

func describeJSONError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%s at byte %d", se.Error(), se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type.String(), te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	return err.Error()
}

func jsonErrorField(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return te.Field
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return strings.Trim(f, `"`)
	}
	return "body"
}

// isJSONContent reports whether r declares a JSON body (parameters such as charset
// are allowed).
func isJSONContent(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

// validName rejects names no pool or host can have, before any lookup.
func validName(s string) bool {
	if s == "" || len(s) > 253 || !utf8.ValidString(s) {
		return false
	}
	return strings.IndexFunc(s, unicode.IsControl) < 0
}
