// Command etcd runs one real etcd server (go.etcd.io/etcd/server/v3/embed, the same
// server code as the upstream binary) for the kube-apiserver rig. It is built from
// kubal's own module graph by setup.sh, so the rig needs no distribution package
// (Debian's etcd 3.4 is too old for kube-apiserver 1.36) and no extra modules.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	dataDir := flag.String("data-dir", "", "data directory (required)")
	client := flag.String("listen-client", "http://127.0.0.1:2379", "client URL")
	peer := flag.String("listen-peer", "http://127.0.0.1:2380", "peer URL")
	noFsync := flag.Bool("unsafe-no-fsync", false, "disable fsync (test data only)")
	showVersion := flag.Bool("version", false, "print the etcd version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("etcd (embed) version", version.Version)
		return
	}
	if *dataDir == "" {
		log.Fatal("-data-dir is required")
	}
	cu, err := url.Parse(*client)
	if err != nil {
		log.Fatalf("-listen-client: %v", err)
	}
	pu, err := url.Parse(*peer)
	if err != nil {
		log.Fatalf("-listen-peer: %v", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "rig"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *noFsync
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("start etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		log.Fatal("etcd not ready after 60s")
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		log.Printf("etcd: %v, stopping", s)
	case err := <-e.Err():
		log.Fatalf("etcd: %v", err)
	}
	e.Close()
}
