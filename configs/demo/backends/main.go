// Command backends runs the demo's real servers: for each address, an HTTP "traffic"
// server and a separate health endpoint (like the istio ingressgateway's status port).
// Touching <dir>/down-<addr> makes that backend's health endpoint answer 503, so the
// demo can show a server going down and coming back.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	addrs := flag.String("addrs", "127.0.0.11,127.0.0.12,127.0.0.13", "comma-separated backend addresses")
	port := flag.Int("port", 8080, "traffic port")
	healthPort := flag.Int("health-port", 15021, "health port (0: none)")
	dir := flag.String("dir", os.TempDir(), "directory holding down-<addr> marker files")
	flag.Parse()

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	var servers []*http.Server
	for _, a := range strings.Split(*addrs, ",") {
		a := strings.TrimSpace(a)
		traffic := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s\n", a)
		})
		health := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := os.Stat(filepath.Join(*dir, "down-"+a)); err == nil {
				http.Error(w, "gateway not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		servers = append(servers, serve(net.JoinHostPort(a, fmt.Sprint(*port)), traffic))
		if *healthPort != 0 {
			servers = append(servers, serve(net.JoinHostPort(a, fmt.Sprint(*healthPort)), health))
		}
	}
	<-ctx.Done()
	sctx, c := context.WithTimeout(context.Background(), time.Second)
	defer c()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
}

func serve(addr string, h http.Handler) *http.Server {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("listen %s: %v", addr, err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.Serve(ln) }()
	log.Printf("backend listening on %s", addr)
	return s
}
