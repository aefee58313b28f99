package vmrig

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kubal/kubal/internal/testutil"
)

// Bird speaks BIRD's control-socket protocol (numbered reply lines), as birdc does,
// without running birdc (each exec is slow under TCG).
type Bird struct {
	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// DialBird connects to BIRD's control socket and reads its greeting.
func DialBird(path string) (*Bird, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	c := &Bird{conn: conn, rd: bufio.NewReader(conn)}
	if _, err := c.read(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("BIRD greeting: %w", err)
	}
	return c, nil
}

// Cmd runs one CLI command and returns its reply lines without the reply codes.
func (c *Bird) Cmd(cmd string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	return c.read()
}

// String runs cmd and returns its reply as one string, or "ERROR ..." when it fails
// (for assertions and logs).
func (c *Bird) String(cmd string) string {
	lines, err := c.Cmd(cmd)
	if err != nil {
		return "ERROR " + err.Error()
	}
	return strings.Join(lines, "\n")
}

// Close closes the control connection.
func (c *Bird) Close() error { return c.conn.Close() }

func (c *Bird) read() ([]string, error) {
	var out []string
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return out, err
		}
		line = strings.TrimSuffix(line, "\n")
		if strings.HasPrefix(line, " ") {
			out = append(out, line[1:])
			continue
		}
		if len(line) < 5 {
			return out, fmt.Errorf("bad BIRD reply line %q", line)
		}
		if line[5:] != "" || line[4] == '-' {
			out = append(out, line[5:])
		}
		if line[4] == ' ' {
			return out, nil
		}
	}
}

// StartBird runs BIRD in the network namespace ns with dir/bird.conf, its control
// socket at dir/bird.ctl and its output appended to dir/bird.log, and waits up to
// 30 s for the control socket. The process is returned whenever it started, so that
// the caller stops it even when BIRD did not come up.
func StartBird(ns, dir string) (*Proc, *Bird, error) {
	ctl := filepath.Join(dir, "bird.ctl")
	p, err := Start("bird", filepath.Join(dir, "bird.log"), nil,
		"/sbin/ip", "netns", "exec", ns, "/usr/sbin/bird", "-f", "-c", filepath.Join(dir, "bird.conf"), "-s", ctl)
	if err != nil {
		return nil, nil, err
	}
	var b *Bird
	if _, ok := testutil.Poll(30*time.Second, 50*time.Millisecond, func() bool {
		b, err = DialBird(ctl)
		return err == nil
	}); !ok {
		log, _ := os.ReadFile(p.Log)
		return p, nil, fmt.Errorf("BIRD did not come up: %v\n%s", err, log)
	}
	return p, b, nil
}
