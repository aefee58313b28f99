// Command speakerd runs one bgp.Speaker in its own process, for the integration tests
// that kill it (SIGTERM, kill -9). It reads the [global] BGP settings and the
// announcements as JSON files, announces them, and on SIGTERM or SIGINT calls
// Shutdown (withdraw everything, Cease) bounded by -shutdown-timeout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kubal/kubal/bgp"
	"github.com/kubal/kubal/config"
)

func main() {
	globalFile := flag.String("global", "", "JSON file holding a config.Global")
	annFile := flag.String("announce", "", "JSON file holding a []bgp.Announcement")
	timeout := flag.Duration("shutdown-timeout", 2*time.Second, "bound on Shutdown")
	flag.Parse()
	if err := run(*globalFile, *annFile, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "speakerd:", err)
		os.Exit(1)
	}
}

func run(globalFile, annFile string, timeout time.Duration) error {
	var g config.Global
	if err := readJSON(globalFile, &g); err != nil {
		return err
	}
	var anns []bgp.Announcement
	if annFile != "" {
		if err := readJSON(annFile, &anns); err != nil {
			return err
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := bgp.New(g, log, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	s.Set(anns)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	sctx, scancel := context.WithTimeout(context.Background(), timeout)
	err = s.Shutdown(sctx)
	scancel()
	cancel()
	if rerr := <-done; rerr != nil && err == nil {
		err = rerr
	}
	return err
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
