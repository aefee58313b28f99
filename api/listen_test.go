package api

import (
	"net"
	"net/http"
	"testing"

	"github.com/kubal/kubal/logging"

	"github.com/kubal/kubal/internal/testutil"
)

func TestListenSkipsUnavailableAddresses(t *testing.T) {
	log := logging.Discard()
	h := http.NotFoundHandler()
	// 192.0.2.1 (TEST-NET) is not on this host: skipped; 127.0.0.1 is served.
	ss, err := ListenAll([]string{"192.0.2.1", "127.0.0.1"}, testutil.FreePort(t), h, nil, log)
	if err != nil || len(ss) != 1 {
		t.Fatalf("listeners %d, err %v", len(ss), err)
	}
	ss[0].Close()
	if _, err := ListenAll([]string{"192.0.2.1"}, testutil.FreePort(t), h, nil, log); err == nil {
		t.Error("no address available, yet no error")
	}
	// A port in use is an error, not a skip.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := ListenAll([]string{"127.0.0.1"}, ln.Addr().(*net.TCPAddr).Port, h, nil, log); err == nil {
		t.Error("port in use accepted")
	}
}
