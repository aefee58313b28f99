package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kubal/kubal/config"
)

// runCommandConfig is RunCommand (SPEC §3.4).
type runCommandConfig struct {
	common
	command   string
	args      []string // server.* names resolved for the target
	interval  time.Duration
	timeout   time.Duration // 0: none
	logOutput bool
}

func parseRunCommand(v *validator, t Target) spec {
	c := &runCommandConfig{common: v.common(t)}
	c.port = t.Port
	c.command = v.mo.String("command", "")
	if c.command == "" {
		v.errf("command", "required by monitor RunCommand (the executable path)")
	}
	c.interval = v.seconds("interval", 60*time.Second, false)
	c.timeout = v.seconds("timeout", 20*time.Second, true)
	c.logOutput = v.bool("log-output", true)
	c.args = []string{""} // PyBal: missing arguments give one empty argument
	lit, ok, err := v.mo.Literal("arguments")
	switch {
	case err != nil:
		v.fromErr("arguments", err)
	case ok:
		items := lit.List
		if lit.Kind != config.LitList {
			items = []config.Literal{lit}
		}
		c.args = c.args[:0]
		for _, it := range items {
			switch it.Kind {
			case config.LitString:
				c.args = append(c.args, it.Str)
			case config.LitName:
				switch it.Str {
				case "server.host":
					c.args = append(c.args, t.Host)
				case "server.ip":
					c.args = append(c.args, addrText(t))
				case "server.port":
					c.args = append(c.args, strconv.Itoa(int(t.Port)))
				default:
					v.errf("arguments", "unknown name %s (only server.host, server.ip and server.port)", it.Str)
				}
			case config.LitInt, config.LitFloat:
				c.args = append(c.args, it.String()) // Python str() of a number
			default:
				v.errf("arguments", "argument %s is not a string or server.host/ip/port", it)
			}
		}
		// PyBal: an empty list also gives one empty argument (a script sees $# = 1).
		if len(c.args) == 0 {
			c.args = []string{""}
		}
	}
	return c
}

func addrText(t Target) string {
	if !t.Addr.IsValid() {
		return ""
	}
	return t.Addr.String()
}

func (c *runCommandConfig) key() string {
	return c.common.key(c.command, strings.Join(c.args, "\x00"))
}

func (c *runCommandConfig) newRunner(e *env) runner {
	return e.newLoop(c.interval, c.timeout, &RunCommand{cfg: c, env: e})
}

// RunCommand runs a program: exit 0 is up. It gets an empty environment and its
// own session; on timeout its whole process group is killed.
type RunCommand struct {
	cfg *runCommandConfig
	env *env
}

// maxOutput bounds the output kept for the debug log.
const maxOutput = 64 << 10

// Check runs the command once.
func (r *RunCommand) Check(ctx context.Context) Result {
	start := r.env.clk.Now()
	res, exitcode := r.run(ctx)
	d := r.env.clk.Now().Sub(start).Seconds()
	r.env.each(func(service, host string) {
		r.env.metrics.runcommandDuration.WithLabelValues(service, host, "RunCommand", resultLabel(res.Up), exitcode).Set(d)
	})
	return res
}

func (r *RunCommand) run(ctx context.Context) (Result, string) {
	c := r.cfg
	// stdout and stderr apart: PyBal logs them as "Cmd stdout: " and "Cmd stderr: ".
	var rs, ws [2]*os.File
	for i := range rs {
		pr, pw, err := os.Pipe()
		if err != nil {
			for j := 0; j < i; j++ {
				rs[j].Close()
				ws[j].Close()
			}
			return Result{Reason: fmt.Sprintf("cannot run %s: %v", c.command, err)}, "None"
		}
		rs[i], ws[i] = pr, pw
	}
	cmd := exec.Command(c.command, c.args...)
	cmd.Env = []string{} // empty, not inherited (PyBal: env={})
	cmd.Stdout, cmd.Stderr = ws[0], ws[1]
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err := cmd.Start()
	ws[0].Close()
	ws[1].Close()
	if err != nil {
		rs[0].Close()
		rs[1].Close()
		return Result{Reason: fmt.Sprintf("cannot run %s: %v", c.command, err)}, "None"
	}
	pgid := cmd.Process.Pid
	var outc [2]chan []byte
	for i, pr := range rs {
		outc[i] = make(chan []byte, 1)
		go func() {
			out, _ := io.ReadAll(io.LimitReader(pr, maxOutput))
			io.Copy(io.Discard, pr) // keep draining so a chatty child never blocks
			pr.Close()
			outc[i] <- out
		}()
	}
	done := make(chan struct{})
	var timedOut atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		select {
		case <-done:
		default:
			timedOut.Store(true)
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	})
	err = cmd.Wait()
	close(done)
	stop()
	// Kill what the command left behind in its group; ESRCH means nothing was left.
	if kerr := syscall.Kill(-pgid, syscall.SIGKILL); kerr == nil {
		r.env.log.Warn("RunCommand left processes behind; killed its process group", "command", c.command, "pgid", pgid)
	}
	stdout, stderr := <-outc[0], <-outc[1]
	if c.logOutput && r.env.log.Enabled(context.Background(), slog.LevelDebug) {
		// PyBal's wording (runcommand.py outReceived/errReceived).
		if len(stdout) > 0 {
			r.env.log.Debug("Cmd stdout: "+escapeOutput(stdout), "command", c.command)
		}
		if len(stderr) > 0 {
			r.env.log.Debug("Cmd stderr: "+escapeOutput(stderr), "command", c.command)
		}
	}
	if err == nil {
		return Result{Up: true}, "0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws, _ := ee.Sys().(syscall.WaitStatus)
		if timedOut.Load() || ctx.Err() != nil {
			return Result{Reason: fmt.Sprintf("%s timed out after %s seconds; killed", c.command, secondsText(c.timeout))}, "None"
		}
		if ws.Signaled() {
			return Result{Reason: fmt.Sprintf("A process has ended with a probable error condition: process ended by signal %d.", int(ws.Signal()))}, "None"
		}
		code := ws.ExitStatus()
		return Result{Reason: fmt.Sprintf("A process has ended with a probable error condition: process ended with exit code %d.", code)}, strconv.Itoa(code)
	}
	return Result{Reason: err.Error()}, "None"
}

// escapeOutput escapes newlines, carriage returns and tabs as PyBal does.
func escapeOutput(b []byte) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(string(b))
}
