package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: Parse never panics, every finding names a line of the file, and a config
// that parses without error holds only valid services.
// Run: go test ./config -run '^$' -fuzz FuzzParse -fuzztime 5m
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.conf"))
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(conf(nil)))
	f.Add([]byte("[DEFAULT]\na = %(b)s\nb = %(a)s%%\n[s]\nc = %(a)s\n"))
	f.Add([]byte(conf(nil) + "[k8s-services]\nclass = kubal.io/lvs\nscheduler = wrr\nvip-ranges = 10.0.0.0/30, 2001:db8::/120\n" +
		"critical-pods = kube-system/k8s-app=calico-node\nmonitors = ['IdleConnection']\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.conf", data)
		var errs Diagnostics
		if err != nil && !errors.As(err, &errs) {
			t.Fatalf("error %T is not Diagnostics: %v", err, err)
		}
		if err != nil && len(errs) == 0 {
			t.Fatal("empty Diagnostics returned as an error")
		}
		if cfg == nil {
			t.Fatal("nil Config")
		}
		for _, ds := range []Diagnostics{errs, cfg.Warnings} {
			for _, d := range ds {
				if d.Pos.Line < 1 || d.Pos.File != "f.conf" {
					t.Fatalf("finding without a line: %#v", d)
				}
			}
		}
		_ = cfg.Summary()
		if err != nil {
			return
		}
		if k := cfg.K8sServices; k != nil && (k.Class == "" || k.Defaults == nil || k.Defaults.Scheduler == "") {
			t.Fatalf("invalid [k8s-services] accepted: %+v", k)
		}
		for _, s := range cfg.Services {
			if !s.IP.IsValid() || s.Port == 0 || (s.Protocol != "tcp" && s.Protocol != "udp") ||
				s.Scheduler == "" || s.ConfigURL == "" || s.DepoolThreshold < 0 || s.DepoolThreshold > 1 {
				t.Fatalf("invalid service accepted: %+v", s)
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("testdata", "kubal-full.conf"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("kubal-full.conf", data); err != nil {
			b.Fatal(err)
		}
	}
}
