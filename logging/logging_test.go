package logging

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
)

func TestPyBalStyleLines(t *testing.T) {
	tests := []struct {
		name string
		log  func(l *slog.Logger)
		want string
	}{
		{"info with system", func(l *slog.Logger) {
			l.With(SystemKey, "text_80").Info("Merged enabled server cp1001, weight 10")
		}, "[text_80] INFO: Merged enabled server cp1001, weight 10\n"},
		{"error with attrs", func(l *slog.Logger) {
			l.Error("could not fetch", SystemKey, "config-etcd", "url", "http://x/y", "err", "connection refused")
		}, "[config-etcd] ERROR: could not fetch url=http://x/y err=\"connection refused\"\n"},
		{"no system", func(l *slog.Logger) { l.Warn("hello") }, "[kubal] WARN: hello\n"},
		{"critical", func(l *slog.Logger) { l.Log(context.Background(), LevelCritical, "boom") }, "[kubal] CRITICAL: boom\n"},
		{"debug hidden at info", func(l *slog.Logger) { l.Debug("x") }, ""},
		{"group", func(l *slog.Logger) { l.WithGroup("g").Info("m", "k", 1) }, "[kubal] INFO: m g.k=1\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tc.log(New(&b, slog.LevelInfo, false))
			if b.String() != tc.want {
				t.Errorf("got %q, want %q", b.String(), tc.want)
			}
		})
	}
}
