package conftool

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func ptr[T any](v T) *T { return &v }

// N goroutines (separate clients, as separate admins) add 1 to one weight at once: every
// increment lands (final == N), each with its own audit record, and the races were real.
func TestConcurrentWritersNoLostUpdate(t *testing.T) {
	const n = 20
	m := startEtcd(t)
	setup := newClient(t, m)
	put(t, setup, testPrefix+"h", `{"pooled": "yes", "weight": 0, "extra": {"keep": true}}`)
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	writers := make([]*Writer, 4)
	for i := range writers {
		writers[i] = NewWriter(newClient(t, m), testLog(t), metrics)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			for {
				_, _, err := writers[i%len(writers)].Apply(context.Background(), testPrefix, "h", Change{WeightDelta: 1}, "sre", "increment")
				if errors.Is(err, ErrConflict) {
					continue // reported, not lost: the caller may retry
				}
				errs <- err
				return
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	resp, err := setup.Get(context.Background(), testPrefix+"h")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &got); err != nil {
		t.Fatal(err)
	}
	if got["weight"] != float64(n) {
		t.Errorf("final weight = %v, want %d (lost updates)", got["weight"], n)
	}
	if got["extra"] == nil || got["pooled"] != "yes" {
		t.Errorf("other fields not kept: %v", got)
	}
	audit, err := setup.Get(context.Background(), strings.TrimSuffix(testPrefix, "/")+AuditSuffix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(audit.Kvs) != n {
		t.Errorf("%d audit records, want %d", len(audit.Kvs), n)
	}
	conflicts := metricValue(t, reg, "kubal_conftool_write_conflicts_total")
	t.Logf("%d increments, %v compare-and-swap conflicts retried", n, conflicts)
	if ok := metricValue(t, reg, "kubal_conftool_writes_total", "result", "ok"); ok != n {
		t.Errorf("writes_total{result=ok} = %v, want %d", ok, n)
	}
}

// A value changed between the writer's read and its transaction is re-read and the
// change re-applied on top of it, never overwritten; a key that keeps changing gives
// ErrConflict and is left as the other writer made it.
func TestWriterNeverOverwritesBlindly(t *testing.T) {
	m := startEtcd(t)
	cli := newClient(t, m)
	put(t, cli, testPrefix+"h", `{"pooled": "yes", "weight": 10}`)
	w := NewWriter(cli, testLog(t), nil)
	w.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC) }

	interfere := func(val string) {
		if _, err := cli.Put(context.Background(), testPrefix+"h", val); err != nil {
			t.Error(err)
		}
	}
	// One racing write: it lands first, the depool is applied on top of it.
	raced := false
	wrapped := &racingKV{KV: cli.KV, before: func() {
		if !raced {
			raced = true
			interfere(`{"pooled": "yes", "weight": 7, "note": "other admin"}`)
		}
	}}
	w.cli = &clientv3.Client{KV: wrapped}
	old, new, err := w.Apply(context.Background(), testPrefix, "h", Change{Pooled: ptr(PooledNo)}, "alice", "maintenance T1234")
	if err != nil {
		t.Fatal(err)
	}
	if old != (Value{Pooled: "yes", Weight: 7}) || new != (Value{Pooled: "no", Weight: 7}) {
		t.Errorf("old, new = %+v, %+v; want the re-read value (weight 7) as old", old, new)
	}
	resp, _ := cli.Get(context.Background(), testPrefix+"h")
	if got := string(resp.Kvs[0].Value); got != `{"note":"other admin","pooled":"no","weight":7}` {
		t.Errorf("stored %s", got)
	}
	// The audit record: who, what, old, new, when, why.
	ak := AuditKey(testPrefix, "h", w.now(), resp.Kvs[0].ModRevision-1)
	ar, _ := cli.Get(context.Background(), ak)
	if len(ar.Kvs) != 1 {
		t.Fatalf("no audit record at %s", ak)
	}
	var rec AuditRecord
	if err := json.Unmarshal(ar.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Actor != "alice" || rec.Reason != "maintenance T1234" || rec.Change != "pooled=no" ||
		string(rec.Old) != `{"pooled":"yes","weight":7,"note":"other admin"}` ||
		string(rec.New) != `{"note":"other admin","pooled":"no","weight":7}` || !rec.Time.Equal(w.now()) {
		t.Errorf("audit record %s", ar.Kvs[0].Value)
	}

	// A writer that always loses gives up with ErrConflict and writes nothing.
	i := 0
	wrapped.before = func() { i++; interfere(`{"pooled": "yes", "weight": ` + string(rune('0'+i)) + `}`) }
	_, _, err = w.Apply(context.Background(), testPrefix, "h", Change{Weight: ptr(50)}, "bob", "")
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v, want ErrConflict", err)
	}
	resp, _ = cli.Get(context.Background(), testPrefix+"h")
	if got := string(resp.Kvs[0].Value); got != `{"pooled": "yes", "weight": `+string(rune('0'+i))+`}` {
		t.Errorf("after a lost race the key holds %s, want the other writer's value", got)
	}
}

// racingKV runs before() just before each transaction, after the writer's read.
type racingKV struct {
	clientv3.KV
	before func()
}

func (r *racingKV) Txn(ctx context.Context) clientv3.Txn {
	r.before()
	return r.KV.Txn(ctx)
}

func TestWriterCases(t *testing.T) {
	m := startEtcd(t)
	cli := newClient(t, m)
	w := NewWriter(cli, testLog(t), nil)
	put(t, cli, testPrefix+"bad", `{"pooled": `)
	put(t, cli, testPrefix+"same", `{ "weight": 5, "pooled": "no" }`)
	tests := []struct {
		name, host string
		ch         Change
		wantErr    string
		wantOld    Value
		wantNew    Value
		wantStored string // "" = key absent
	}{
		{name: "create missing key with only the changed field", host: "new", ch: Change{Pooled: ptr(PooledNo)},
			wantNew: Value{Pooled: "no"}, wantStored: `{"pooled":"no"}`},
		{name: "weight delta on absent weight starts at 10", host: "new2", ch: Change{WeightDelta: -3},
			wantNew: Value{Weight: 7}, wantStored: `{"weight":7}`},
		{name: "no-op writes nothing", host: "same", ch: Change{Pooled: ptr(PooledNo), Weight: ptr(5)},
			wantOld: Value{Pooled: "no", Weight: 5}, wantNew: Value{Pooled: "no", Weight: 5}, wantStored: `{ "weight": 5, "pooled": "no" }`},
		{name: "malformed stored value is not overwritten", host: "bad", ch: Change{Pooled: ptr(PooledYes)},
			wantErr: "malformed", wantStored: `{"pooled": `},
		{name: "bad pooled", host: "x", ch: Change{Pooled: ptr("maybe")}, wantErr: "want yes, no or inactive"},
		{name: "negative weight", host: "x", ch: Change{Weight: ptr(-1)}, wantErr: "out of range"},
		{name: "empty change", host: "x", wantErr: "empty change"},
		{name: "weight and delta", host: "x", ch: Change{Weight: ptr(1), WeightDelta: 1}, wantErr: "exclusive"},
		{name: "host with slash", host: "a/b", ch: Change{Weight: ptr(1)}, wantErr: "bad host"},
		{name: "delta below zero", host: "same", ch: Change{WeightDelta: -6}, wantErr: "out of range",
			wantStored: `{ "weight": 5, "pooled": "no" }`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, new, err := w.Apply(context.Background(), testPrefix, tt.host, tt.ch, "t", "")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if old != tt.wantOld || new != tt.wantNew {
				t.Errorf("old, new = %+v, %+v; want %+v, %+v", old, new, tt.wantOld, tt.wantNew)
			}
			resp, err := cli.Get(context.Background(), testPrefix+tt.host)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if len(resp.Kvs) > 0 {
				got = string(resp.Kvs[0].Value)
			}
			if got != tt.wantStored {
				t.Errorf("stored %q, want %q", got, tt.wantStored)
			}
		})
	}
	// Only the two created keys are audited (no-ops and errors are not).
	audit, _ := cli.Get(context.Background(), strings.TrimSuffix(testPrefix, "/")+AuditSuffix, clientv3.WithPrefix())
	if len(audit.Kvs) != 2 {
		t.Errorf("%d audit records, want 2", len(audit.Kvs))
	}
}
