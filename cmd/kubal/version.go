package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/kubal/kubal/internal/buildinfo"
)

// version and commit are stamped by the Debian package build (packaging/deb/build.sh:
// -ldflags "-X main.version=... -X main.commit=..."); empty in a plain go build, where
// the Go build information fills in what it knows.
var version, commit string

// versionFlag registers --version on fs; run prints buildinfo.String when it is set.
func versionFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("version", false, "print the version, commit and Go version, and exit")
}

func printVersion(w io.Writer) int {
	fmt.Fprintln(w, buildinfo.String("kubal", version, commit))
	return 0
}
