package ipvs

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/kubal/kubal/logging"
)

func TestDebugBackendLogsIpvsadmLines(t *testing.T) {
	var b strings.Builder
	log := logging.New(&b, slog.LevelDebug, false)
	fake := NewFake()
	db := Debug(fake, log.With("system", "ipvs"))
	ctx := context.Background()
	k := ServiceKey{Protocol: TCP, Addr: netip.MustParseAddr("10.0.0.1"), Port: 80}
	if err := db.AddService(ctx, Service{ServiceKey: k, Scheduler: "wrr"}); err != nil {
		t.Fatal(err)
	}
	if err := db.AddDestination(ctx, k, Destination{Addr: netip.MustParseAddr("10.0.1.5"), Weight: 10}); err != nil {
		t.Fatal(err)
	}
	want := "[ipvs] DEBUG: -A -t 10.0.0.1:80 -s wrr\n[ipvs] DEBUG: -a -t 10.0.0.1:80 -r 10.0.1.5 -w 10\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
	if len(fake.Table()[k].Destinations) != 1 {
		t.Error("the change did not reach the backend")
	}
}
