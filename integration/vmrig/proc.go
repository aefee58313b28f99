package vmrig

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process whose output goes to a log file (or, from StartPiped, to a
// reader).
type Proc struct {
	Name string
	Log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs args with the extra environment env, stdout and stderr appended to log.
func Start(name, log string, env []string, args ...string) (*Proc, error) {
	lf, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: log, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

// StartPiped runs args with the extra environment env and hands its stdout to read,
// in a goroutine; the process counts as exited once read has returned too. It has no
// log.
func StartPiped(name string, env []string, read func(io.Reader), args ...string) (*Proc, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); read(out) }()
	go func() { wg.Wait(); _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Alive reports whether the process has not exited yet.
func (p *Proc) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Send sends sig without waiting (e.g. SIGHUP for a reload).
func (p *Proc) Send(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Signal sends sig and waits up to wait for the exit; it reports whether the process
// is gone.
func (p *Proc) Signal(sig syscall.Signal, wait time.Duration) bool {
	if !p.Alive() {
		return true
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return true
	case <-time.After(wait):
		return false
	}
}

// Stop ends the process: SIGTERM, then SIGKILL if it is still there after wait.
func (p *Proc) Stop(wait time.Duration) {
	if !p.Signal(syscall.SIGTERM, wait) {
		p.Signal(syscall.SIGKILL, 5*time.Second)
	}
}

// Tail returns the last n bytes of the log.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// DumpLog prints the last n bytes of the log file path under a "---- <name> (tail)"
// header, for a failed scenario's output; a missing log prints nothing.
func DumpLog(path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	fmt.Printf("---- %s (tail)\n%s\n", filepath.Base(path), b)
}
