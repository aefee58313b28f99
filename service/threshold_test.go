package service

import (
	"slices"
	"testing"

	"github.com/kubal/kubal/admin"
	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/pool"
	"github.com/kubal/kubal/source"
)

func TestThreshold(t *testing.T) {
	hosts := []string{"mw1", "mw2", "mw3", "mw4"}
	tests := []struct {
		name      string
		threshold float64
		down      []string // failing health
		disabled  []string // by the source
		intent    map[string]admin.Override
		change    admin.Change
		want      string // "" = allowed
	}{
		{"enough up", 0.5, nil, nil, nil, depool("mw1"), ""},
		{"exactly at threshold after", 0.5, []string{"mw4"}, nil, nil, depool("mw1"), ""},
		{"below threshold", 0.5, []string{"mw3", "mw4"}, nil, nil, depool("mw1"),
			"depooling mw1 would leave 1 of 4 servers up, enabled and weighted, below threshold 0.5 x 4 = 2"},
		{"disabled servers count in the denominator", 0.5, nil, []string{"mw2", "mw3"}, nil, depool("mw1"),
			"depooling mw1 would leave 1 of 4 servers up, enabled and weighted, below threshold 0.5 x 4 = 2"},
		{"admin-depooled servers count too", 0.5, nil, nil, map[string]admin.Override{"mw2": {Depooled: true}, "mw3": {Depooled: true}}, depool("mw1"),
			"depooling mw1 would leave 1 of 4 servers up, enabled and weighted, below threshold 0.5 x 4 = 2"},
		{"fractional threshold", 0.7, []string{"mw4"}, nil, nil, depool("mw1"),
			"depooling mw1 would leave 2 of 4 servers up, enabled and weighted, below threshold 0.7 x 4 = 2.8"},
		{"a down server may always be depooled", 0.5, []string{"mw3", "mw4"}, nil, nil, depool("mw4"), ""},
		{"an already disabled server", 0.5, nil, []string{"mw2", "mw3"}, nil, depool("mw2"), ""},
		{"weight 0 is a depool", 0.5, []string{"mw3", "mw4"}, nil, nil, admin.Change{Host: "mw1", Op: admin.OpWeight},
			"weight 0 on mw1 would leave 1 of 4 servers up, enabled and weighted, below threshold 0.5 x 4 = 2"},
		{"weight-0 servers do not count as up", 0.5, nil, nil, map[string]admin.Override{"mw2": {Weight: new(0)}, "mw3": {Weight: new(0)}}, depool("mw1"),
			"depooling mw1 would leave 1 of 4 servers up, enabled and weighted, below threshold 0.5 x 4 = 2"},
		{"a weight change above 0 is not a depool", 0.5, []string{"mw3", "mw4"}, nil, nil, admin.Change{Host: "mw1", Op: admin.OpWeight, Weight: 3}, ""},
		{"pool is never refused", 1, []string{"mw2", "mw3", "mw4"}, nil, map[string]admin.Override{"mw1": {Depooled: true}}, admin.Change{Host: "mw1", Op: admin.OpPool}, ""},
		{"unknown server", 0.5, nil, nil, nil, depool("mw9"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &State{Config: &config.Service{Name: "text_80", DepoolThreshold: tt.threshold}, Source: source.Set{}, Snapshot: &pool.Snapshot{}}
			for _, h := range hosts {
				st.Source[h] = source.Server{Host: h, Weight: 10, Enabled: !slices.Contains(tt.disabled, h)}
				st.Snapshot.Servers = append(st.Snapshot.Servers, pool.ServerState{Host: h, Up: !slices.Contains(tt.down, h)})
			}
			before := admin.Intent{Loaded: true, Overrides: tt.intent}
			got := ""
			if err := Threshold(st, tt.change.Host, before, before.With(tt.change)); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Threshold = %q, want %q", got, tt.want)
			}
		})
	}
}

func depool(h string) admin.Change { return admin.Change{Host: h, Op: admin.OpDepool} }
