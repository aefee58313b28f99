// Command kubal is a PyBal-compatible LVS load-balancer daemon: it reads pybal.conf,
// health-checks real servers, programs IPVS and announces the VIPs over BGP.
//
//	kubal [-c FILE] [-n|--dryrun] [-d|--debug] [--check-config] [--log-format text|json]
//
// Signals: SIGTERM/SIGINT stop (BGP routes withdrawn, IPVS left in place); SIGHUP
// reloads the config; SIGUSR2 stops for a planned restart (with bgp-graceful-restart
// the routes stay at the routers until the new process re-announces them).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubal/kubal/config"
	"github.com/kubal/kubal/daemon"
	"github.com/kubal/kubal/logging"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the exit, so tests can call it. Exit codes: 0 ok, 1 bad config or
// runtime failure, 2 bad arguments (as argparse).
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kubal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		conf        = fs.String("c", "/etc/pybal/pybal.conf", "config file")
		dryRun      bool
		dryRunBGP   = fs.Bool("dryrun-bgp", false, "with -n: open the BGP sessions and announce the VIPs anyway (a dry run touches nothing outside the process by default; PyBal's --dryrun still spoke BGP)")
		debug       bool
		checkConfig = fs.Bool("check-config", false, "parse and validate the config, print a summary, and exit 0 (valid) or 1")
		logFormat   = fs.String("log-format", "text", "log format: text (PyBal style) or json")
	)
	showVersion := versionFlag(fs)
	fs.BoolVar(&dryRun, "n", false, "dry run: print IPVS operations as ipvsadm lines instead of applying them")
	fs.BoolVar(&dryRun, "dryrun", false, "same as -n")
	fs.BoolVar(&debug, "d", false, "debug logging")
	fs.BoolVar(&debug, "debug", false, "same as -d")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		return printVersion(stdout)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kubal: unexpected arguments: %v\n", fs.Args())
		return 2
	}
	if *dryRunBGP && !dryRun {
		fmt.Fprintf(stderr, "kubal: --dryrun-bgp only applies with -n/--dryrun\n")
		return 2
	}
	if *logFormat != "text" && *logFormat != "json" {
		fmt.Fprintf(stderr, "kubal: --log-format must be text or json\n")
		return 2
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	log := logging.New(stderr, level, *logFormat == "json")

	if *checkConfig {
		cfg, err := daemon.LoadConfig(*conf)
		if err != nil {
			printConfigErrors(stderr, err)
			return 1
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		fmt.Fprint(stdout, cfg.Summary())
		return 0
	}

	notifier := newNotifier()
	d, err := daemon.New(daemon.Options{
		ConfigPath:   *conf,
		DryRun:       dryRun,
		DryRunBGP:    *dryRunBGP,
		Debug:        debug,
		Log:          log,
		DryRunOutput: stdout,
		Ready: func() {
			notifier.Ready()
			notifier.Status("serving")
		},
	})
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	// SIGUSR2: stop for a planned restart (systemd restarts kubal): with
	// bgp-graceful-restart the routers keep this host's routes meanwhile.
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	go func() {
		select {
		case <-usr2:
			log.Info("SIGUSR2: stopping for a planned restart")
			d.DetachOnStop()
			cancel()
		case <-ctx.Done():
		}
	}()
	go notifier.RunWatchdog(ctx, d.Alive)
	go func() {
		<-ctx.Done()
		notifier.Stopping() // before the BGP withdraw, so systemd shows "deactivating"
	}()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				notifier.Reloading()
				log.Info("SIGHUP: reloading config", "path", *conf)
				if err := d.Reload(ctx); err != nil {
					notifier.Status("reload failed, running the previous config")
				} else {
					notifier.Status("serving")
				}
				notifier.Ready()
			}
		}
	}()

	if err := d.Run(ctx); err != nil {
		log.Error("kubal stopped", "err", err)
		return 1
	}
	return 0
}

func printConfigErrors(w io.Writer, err error) {
	var ds config.Diagnostics
	if errors.As(err, &ds) {
		fmt.Fprintf(w, "kubal: %d config error(s):\n", len(ds))
		for _, d := range ds {
			fmt.Fprintf(w, "  %s\n", d)
		}
		return
	}
	fmt.Fprintf(w, "kubal: %v\n", err)
}
