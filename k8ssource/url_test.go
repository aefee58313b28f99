package k8ssource

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubal/kubal/config"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		raw     string
		want    URL
		wantErr string
	}{
		{raw: "k8s://", want: URL{}},
		{raw: "k8s:///", want: URL{}},
		{raw: "k8s://prod-eqiad?nodes=node-role.kubernetes.io/ingress=true&endpoints=istio-system/istio-ingressgateway",
			want: URL{Context: "prod-eqiad", Nodes: "node-role.kubernetes.io/ingress=true", Namespace: "istio-system", Service: "istio-ingressgateway"}},
		// kubeadm's default context name contains '@': it is a context, not userinfo.
		{raw: "k8s://kubernetes-admin@kubernetes?nodes=role%3Dingress", want: URL{Context: "kubernetes-admin@kubernetes", Nodes: "role=ingress"}},
		{raw: "k8s://arn:aws:eks:eu-west-1:1:cluster%2Fx/", want: URL{Context: "arn:aws:eks:eu-west-1:1:cluster/x"}},
		{raw: "k8s://?nodes=zone+in+(a,b),!excluded", want: URL{Nodes: "!excluded,zone in (a,b)"}},
		{raw: "k8s://?endpoints=ns/svc", want: URL{Namespace: "ns", Service: "svc"}},

		{raw: "file:///x", wantErr: "not a k8s:// URL"},
		{raw: "k8s://?nodes=a%3D%3Db%3D", wantErr: "bad label selector"},
		{raw: "k8s://?endpoints=svc", wantErr: "want <namespace>/<service>"},
		{raw: "k8s://?endpoints=ns/", wantErr: "want <namespace>/<service>"},
		{raw: "k8s://?endpoints=Bad_NS/svc", wantErr: `namespace "Bad_NS"`},
		{raw: "k8s://?endpoints=ns/1svc", wantErr: `service "1svc"`},
		{raw: "k8s://?node=a", wantErr: `unknown parameter "node"`},
		{raw: "k8s://?nodes=a&nodes=b", wantErr: "nodes given 2 times"},
		{raw: "k8s://%zz", wantErr: "context"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			got, err := ParseURL(tt.raw)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), tt.raw) {
					t.Fatalf("err = %v, want one naming the URL and containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("ParseURL = %+v, want %+v", got, tt.want)
			}
			// String round-trips.
			again, err := ParseURL(got.String())
			if err != nil || again != got {
				t.Fatalf("ParseURL(%q) = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

// TestExampleConfig keeps configs/k8s/ingress.conf valid: it loads without warnings
// and its k8s:// URL means what its comments say.
func TestExampleConfig(t *testing.T) {
	c, err := config.Load(filepath.Join("..", "configs", "k8s", "ingress.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) > 0 {
		t.Fatalf("warnings: %v", c.Warnings)
	}
	s, ok := c.Service("ingress_https")
	if !ok {
		t.Fatal("no ingress_https service")
	}
	u, err := ParseURL(s.ConfigURL)
	if err != nil {
		t.Fatal(err)
	}
	want := URL{Context: "prod", Nodes: "node-role.kubernetes.io/ingress=true", Namespace: "istio-system", Service: "istio-ingressgateway"}
	if u != want || s.K8sCordoned != CordonDepool || len(s.K8sTaints) != 2 {
		t.Fatalf("URL %+v cordoned %q taints %v", u, s.K8sCordoned, s.K8sTaints)
	}
}
