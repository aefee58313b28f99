package conftool

import (
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"maps"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/kubal/kubal/source"
)

func TestDecodeAndMerge(t *testing.T) {
	prev := source.Server{Host: "h", Weight: 3, Enabled: false, Reason: "conftool: pooled=no"}
	tests := []struct {
		name   string
		raw    string
		known  bool // h was known with prev
		want   source.Server
		remove bool
		err    string
	}{
		{name: "yes", raw: `{"pooled": "yes", "weight": 10}`, want: source.Server{Host: "h", Weight: 10, Enabled: true}},
		{name: "no", raw: `{"pooled": "no", "weight": 1}`, want: source.Server{Host: "h", Weight: 1, Reason: "conftool: pooled=no"}},
		{name: "inactive removes", raw: `{"pooled": "inactive", "weight": 1}`, known: true, remove: true},
		{name: "other string disables (PyBal)", raw: `{"pooled": "drained"}`,
			want: source.Server{Host: "h", Weight: 10, Reason: "conftool: pooled=drained"}},
		{name: "new server defaults", raw: `{}`, want: source.Server{Host: "h", Weight: 10, Enabled: true}},
		{name: "absent pooled keeps state", raw: `{"weight": 8}`, known: true,
			want: source.Server{Host: "h", Weight: 8, Reason: "conftool: pooled=no"}},
		{name: "absent weight keeps weight", raw: `{"pooled": "yes"}`, known: true, want: source.Server{Host: "h", Weight: 3, Enabled: true}},
		{name: "extra fields ignored", raw: `{"pooled": "yes", "weight": 2, "note": [1, {"x": null}]}`,
			want: source.Server{Host: "h", Weight: 2, Enabled: true}},
		{name: "weight zero", raw: `{"weight": 0}`, want: source.Server{Host: "h", Weight: 0, Enabled: true}},
		{name: "string weight", raw: `{"weight": "10"}`, err: `"weight" must be an integer`},
		{name: "float weight", raw: `{"weight": 10.5}`, err: `"weight" must be an integer`},
		{name: "huge weight", raw: `{"weight": 99999999999}`, err: `"weight" must be an integer`},
		{name: "weight 65535", raw: `{"weight": 65535}`, want: source.Server{Host: "h", Weight: 65535, Enabled: true}},
		{name: "weight 65536", raw: `{"weight": 65536}`, err: `"weight" must be an integer 0..65535, got 65536`},
		{name: "weight 1e13", raw: `{"weight": 10000000000000}`, err: `"weight" must be an integer 0..65535`},
		{name: "negative weight", raw: `{"weight": -7}`, err: `"weight" must be an integer 0..65535, got -7`},
		{name: "control characters in pooled are quoted", raw: `{"pooled": "no\nmw2:\tenabled/up/pooled"}`,
			want: source.Server{Host: "h", Weight: 10, Reason: `conftool: pooled="no\nmw2:\tenabled/up/pooled"`}},
		{name: "bool pooled", raw: `{"pooled": false}`, err: `"pooled" must be a string`},
		{name: "array", raw: `[]`, err: "not a JSON object"},
		{name: "null", raw: `null`, err: "not a JSON object"},
		{name: "garbage", raw: `{"pooled": "yes"`, err: "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := decodeEntry([]byte(tt.raw))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, keep := merge(prev, tt.known, "h", e)
			if keep == tt.remove {
				t.Fatalf("keep = %v, want %v", keep, !tt.remove)
			}
			if keep && got != tt.want {
				t.Errorf("merge = %+v, want %+v", got, tt.want)
			}
		})
	}
}

type setRecorder struct{ sets []source.Set }

func (r *setRecorder) Update(s source.Set) { r.sets = append(r.sets, s) }
func (r *setRecorder) Failed(error)        {}

// serverSet: a full re-read keeps a known server whose value is now malformed, drops
// an unknown malformed one and every server not in the read, and sends an Update only
// when the set changed.
func TestServerSetReset(t *testing.T) {
	yes, no := "yes", "no"
	ten := 10
	r := &setRecorder{}
	s := &serverSet{ev: r, servers: map[string]source.Server{}}
	s.reset(nil)
	s.reset(nil)
	if len(r.sets) != 1 || len(r.sets[0]) != 0 {
		t.Fatalf("first read must send the (empty) set once; got %v", r.sets)
	}
	s.reset([]kv{{host: "a", e: entry{pooled: &yes, weight: &ten}}, {host: "b", e: entry{pooled: &no}}})
	s.reset([]kv{{host: "a", malformed: true}, {host: "c", malformed: true}})
	want := source.Set{"a": {Host: "a", Weight: 10, Enabled: true}}
	if got := r.sets[len(r.sets)-1]; !maps.Equal(got, want) {
		t.Errorf("after re-read = %v, want %v", got, want)
	}
	s.apply([]kv{{host: "a", malformed: true}})
	if len(r.sets) != 3 {
		t.Errorf("a malformed event must not send an Update; got %d updates", len(r.sets))
	}
	s.apply([]kv{{host: "a", deleted: true}, {host: "d", e: entry{pooled: &no}}, {host: "d", e: entry{pooled: &yes}}})
	want = source.Set{"d": {Host: "d", Weight: 10, Enabled: true}}
	if got := r.sets[len(r.sets)-1]; len(r.sets) != 4 || !maps.Equal(got, want) {
		t.Errorf("events of one response coalesce into one Update of %v; got %v", want, r.sets)
	}
}

// BenchmarkApplyOneChange: kubal's own cost of one watch event on a 10,000-server pool
// (decode, merge, and the copy of the set that Update hands over), without etcd.
func BenchmarkApplyOneChange(b *testing.B) {
	s := &serverSet{ev: discardEvents{}, servers: map[string]source.Server{}}
	kvs := make([]kv, benchServers)
	yes, ten := "yes", 10
	for i := range kvs {
		kvs[i] = kv{host: fmt.Sprintf("server%05d.eqiad.wmnet", i), e: entry{pooled: &yes, weight: &ten}}
	}
	s.reset(kvs)
	w := &watcher{prefix: testPrefix}
	vals := [][]byte{[]byte(`{"pooled": "no", "weight": 10}`), []byte(`{"pooled": "yes", "weight": 10}`)}
	i := 0
	for b.Loop() {
		i++
		k, _ := w.decode(&mvccpb.KeyValue{Key: []byte(testPrefix + "server04242.eqiad.wmnet"), Value: vals[i%2]})
		s.apply([]kv{k})
	}
}

type discardEvents struct{}

func (discardEvents) Update(source.Set) {}
func (discardEvents) Failed(error)      {}

func TestBackoff(t *testing.T) {
	w := &watcher{backoffMin: 100 * time.Millisecond, backoffMax: 5 * time.Second}
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000} {
		want *= time.Millisecond
		for range 50 {
			if d := w.backoff(attempt); d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
	if d := w.backoff(1000); d > w.backoffMax {
		t.Fatalf("backoff(1000) = %v, over the cap", d)
	}
}

// FuzzDecodeEntry: any bytes either decode to a value within bounds or give an error;
// never a panic.
func FuzzDecodeEntry(f *testing.F) {
	for _, s := range []string{`{"pooled": "yes", "weight": 10}`, `{"pooled": "inactive"}`, `{}`, `null`, `[1]`, `{"weight": 1e3}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := decodeEntry(raw)
		if err != nil {
			return
		}
		if e.weight != nil && source.CheckWeight(int64(*e.weight)) != nil {
			t.Fatalf("weight %d out of range from %q", *e.weight, raw)
		}
		srv, keep := merge(source.Server{}, false, "h", e)
		if keep && srv.Host != "h" {
			t.Fatalf("merge lost the host: %+v", srv)
		}
		// The reason reaches /pools, /v1 and the logs: one printable line.
		if !utf8.ValidString(srv.Reason) || strings.IndexFunc(srv.Reason, unicode.IsControl) >= 0 {
			t.Fatalf("reason %q from %q", srv.Reason, raw)
		}
	})
}
