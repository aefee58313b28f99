// Package buildinfo formats the --version line of kubal and kubalctl from the version
// the package build stamps and the build information the Go toolchain records (VCS
// commit, Go version).
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Info is what --version prints.
type Info struct {
	Version  string // package version, or the module version, or "devel"
	Commit   string // VCS revision, "unknown" when the build recorded none
	Modified bool   // built from a tree with uncommitted changes
	Go       string // Go toolchain version
}

// Read combines what the package build stamped (-X main.version, -X main.commit; empty
// in a plain go build) with the running binary's build information. A stamped commit
// wins: package builds run with -buildvcs=false (GOFLAGS on build machines, or no .git
// in a source tarball).
func Read(version, commit string) Info {
	bi, _ := debug.ReadBuildInfo()
	in := fromBuildInfo(version, bi)
	if commit != "" {
		in.Commit = commit
	}
	return in
}

func fromBuildInfo(stamped string, bi *debug.BuildInfo) Info {
	in := Info{Version: stamped, Commit: "unknown", Go: "unknown"}
	if bi == nil {
		if in.Version == "" {
			in.Version = "devel"
		}
		return in
	}
	in.Go = bi.GoVersion
	if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		in.Version = bi.Main.Version
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is the one line printed by --version, e.g.
// "kubal 0.1.0 (commit 0123abcd, go1.26.0)".
func (in Info) String(name string) string {
	commit := in.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if in.Modified {
		commit += "+modified"
	}
	return fmt.Sprintf("%s %s (commit %s, %s)", name, in.Version, commit, strings.TrimSpace(in.Go))
}

// String is Read(version, commit).String(name).
func String(name, version, commit string) string { return Read(version, commit).String(name) }
