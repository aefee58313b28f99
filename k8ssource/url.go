package k8ssource

import (
	"fmt"
	"net/url"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Scheme is the config URL prefix of this source.
const Scheme = "k8s://"

// URL is a parsed `k8s://[context]?nodes=<label selector>&endpoints=<namespace>/<service>`.
type URL struct {
	// Context is the kubeconfig context ("" = the kubeconfig's current context).
	Context string
	// Nodes is the label selector of the Nodes that are real servers ("" = all Nodes).
	Nodes string
	// Namespace and Service name the Service whose EndpointSlices gate each Node: a Node
	// is eligible only with a ready endpoint of that Service on it. Both empty: no gating.
	Namespace string
	Service   string
}

// Gated reports whether Nodes are gated by a Service's endpoints.
func (u URL) Gated() bool { return u.Service != "" }

func (u URL) String() string {
	q := url.Values{}
	if u.Nodes != "" {
		q.Set("nodes", u.Nodes)
	}
	if u.Gated() {
		q.Set("endpoints", u.Namespace+"/"+u.Service)
	}
	s := Scheme + url.PathEscape(u.Context)
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// ParseURL parses a k8s:// config URL. The context is taken verbatim (percent-decoded)
// from between the scheme and '?', not parsed as a host: kubeconfig context names such
// as "kubernetes-admin@cluster" or "arn:aws:eks:...:cluster/x" are not host names.
func ParseURL(raw string) (URL, error) {
	rest, ok := strings.CutPrefix(raw, Scheme)
	if !ok {
		return URL{}, fmt.Errorf("k8s source %q: not a %s URL", raw, Scheme)
	}
	ctxPart, query, _ := strings.Cut(rest, "?")
	ctxPart = strings.TrimSuffix(ctxPart, "/")
	var u URL
	ctxName, err := url.PathUnescape(ctxPart)
	if err != nil {
		return URL{}, fmt.Errorf("k8s source %q: context: %w", raw, err)
	}
	u.Context = ctxName

	q, err := url.ParseQuery(query)
	if err != nil {
		return URL{}, fmt.Errorf("k8s source %q: query: %w", raw, err)
	}
	for k, vs := range q {
		if len(vs) > 1 {
			return URL{}, fmt.Errorf("k8s source %q: %s given %d times", raw, k, len(vs))
		}
		switch k {
		case "nodes":
			sel, err := labels.Parse(vs[0])
			if err != nil {
				return URL{}, fmt.Errorf("k8s source %q: nodes: bad label selector: %w", raw, err)
			}
			u.Nodes = sel.String()
		case "endpoints":
			ns, svc, ok := strings.Cut(vs[0], "/")
			if !ok || ns == "" || svc == "" {
				return URL{}, fmt.Errorf("k8s source %q: endpoints: want <namespace>/<service>, got %q", raw, vs[0])
			}
			if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
				return URL{}, fmt.Errorf("k8s source %q: endpoints: namespace %q: %s", raw, ns, strings.Join(errs, "; "))
			}
			if errs := validation.IsDNS1035Label(svc); len(errs) > 0 {
				return URL{}, fmt.Errorf("k8s source %q: endpoints: service %q: %s", raw, svc, strings.Join(errs, "; "))
			}
			u.Namespace, u.Service = ns, svc
		default:
			return URL{}, fmt.Errorf("k8s source %q: unknown parameter %q (want nodes, endpoints)", raw, k)
		}
	}
	return u, nil
}
