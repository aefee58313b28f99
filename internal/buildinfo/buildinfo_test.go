package buildinfo

import (
	"runtime/debug"
	"testing"
)

func TestString(t *testing.T) {
	bi := func(mainVer string, settings ...debug.BuildSetting) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: mainVer}, Settings: settings}
	}
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "0123456789abcdef0123"}
	dirty := debug.BuildSetting{Key: "vcs.modified", Value: "true"}
	for _, tc := range []struct {
		name    string
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"package build", "0.1.0", bi("(devel)", rev), "kubal 0.1.0 (commit 0123456789ab, go1.26.0)"},
		{"plain go build", "", bi("(devel)", rev, dirty), "kubal devel (commit 0123456789ab+modified, go1.26.0)"},
		{"go install module@version", "", bi("v1.2.3"), "kubal v1.2.3 (commit unknown, go1.26.0)"},
		{"no build info", "", nil, "kubal devel (commit unknown, unknown)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fromBuildInfo(tc.stamped, tc.bi).String("kubal"); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadStampedCommitWins(t *testing.T) {
	if got := Read("1.0", "feedface").Commit; got != "feedface" {
		t.Errorf("commit %q, want the stamped feedface", got)
	}
}
