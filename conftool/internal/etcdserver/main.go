// Command etcdserver runs one embedded etcd member (go.etcd.io/etcd/server/v3/embed, the
// go.mod version) in its own process, so benchmarks can keep etcd out of the measured
// process as in production. It prints "ready" on stdout once it serves clients.
//
//	etcdserver -dir DIR -client 127.0.0.1:PORT -peer 127.0.0.1:PORT [-nofsync]
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func main() {
	dir := flag.String("dir", "", "data directory")
	client := flag.String("client", "127.0.0.1:2379", "client host:port")
	peer := flag.String("peer", "127.0.0.1:2380", "peer host:port")
	noFsync := flag.Bool("nofsync", false, "skip fsync (UnsafeNoFsync)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "etcdserver: -dir is required")
		os.Exit(2)
	}
	cu := url.URL{Scheme: "http", Host: *client}
	pu := url.URL{Scheme: "http", Host: *peer}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = *dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = "bench=" + pu.String()
	cfg.UnsafeNoFsync = *noFsync
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		os.Exit(1)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		fmt.Fprintln(os.Stderr, "etcdserver: not ready after 30s")
		os.Exit(1)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case <-sig:
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
	}
	e.Close()
}
