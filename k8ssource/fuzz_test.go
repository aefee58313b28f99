package k8ssource

import (
	"strings"
	"testing"
	"unicode"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubal/kubal/source"
)

// FuzzWeightAnnotation: any kubal.io/weight value gives a weight 0..65535 (the value's
// or the default 1), and a finding that quotes the value rather than echoing control
// characters into the logs.
func FuzzWeightAnnotation(f *testing.F) {
	for _, s := range []string{"5", " 7 ", "0", "65535", "65536", "-1", "1e13", "10000000000000", "x\n", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Annotations: map[string]string{WeightAnnotation: v}}}
		s, warn := NodeServer(n, Endpoints{Ready: 1}, Policy{})
		if err := source.CheckWeight(int64(s.Weight)); err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if warn != nil {
			if s.Weight != 1 {
				t.Fatalf("%q: weight %d with a finding", v, s.Weight)
			}
			if strings.IndexFunc(warn.Error(), unicode.IsControl) >= 0 {
				t.Fatalf("%q: finding carries a control character: %q", v, warn)
			}
		}
	})
}
