package vmrig

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"
)

// Steps prints a scenario's measured results as "<mark> <step>: <text>" lines; the
// host's Boot collects the lines holding the mark as the run's summary.
type Steps struct {
	mark  string
	lines []string
}

// NewSteps returns a Steps whose lines start with mark (e.g. "E2E-STEP").
func NewSteps(mark string) *Steps { return &Steps{mark: mark} }

// Add prints one result line and keeps it.
func (s *Steps) Add(step, format string, args ...any) {
	line := fmt.Sprintf("%s %s: %s", s.mark, step, fmt.Sprintf(format, args...))
	s.lines = append(s.lines, line)
	fmt.Println(line)
}

// Lines returns the lines printed so far.
func (s *Steps) Lines() []string { return append([]string(nil), s.lines...) }

// Control asks the host's control endpoint (base, e.g. http://10.0.2.2:<port>) to do
// what to the API server: POST <base>/apiserver/<what> ("stop" or "start").
func Control(c *http.Client, base, what string) error {
	resp, err := c.Post(base+"/apiserver/"+what, "text/plain", nil)
	if err != nil {
		return fmt.Errorf("host control %s: %w", what, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("host control %s: %s: %s", what, resp.Status, b)
	}
	return nil
}

// OneRequest sends one HTTP/1.0 GET / with the Host header host on a new TCP
// connection to addr and returns the response's body, trimmed, when the status is
// 200. Its timeouts (5 s to connect: the SYN and two retransmissions, at 1 s and 3 s;
// 3 s for the exchange) are generous under TCG, where one SYN and its first
// retransmission were once lost while 3 kube-proxies and kubal shared the guest's one
// CPU (k8sservices step 7b); a real failure (RST, no route, a dead real server) is fast.
func OneRequest(addr, host string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: "+host+"\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	s := string(b)
	if !strings.HasPrefix(s, "HTTP/1.0 200") && !strings.HasPrefix(s, "HTTP/1.1 200") {
		return "", fmt.Errorf("bad response %.60q", s)
	}
	i := strings.Index(s, "\r\n\r\n")
	if i < 0 {
		return "", errors.New("no body")
	}
	return strings.TrimSpace(s[i+4:]), nil
}

// IPVSDests returns the destinations of the IPVS TCP service svc (vip:port) that take
// new connections: address -> weight. A destination at weight 0 is draining (deleted
// once idle or after the drain timeout), so it counts as out of the pool. A service
// ipvsadm cannot list has none.
func IPVSDests(svc string) map[string]string {
	out, err := exec.Command("/sbin/ipvsadm", "-Ln", "-t", svc).CombinedOutput()
	m := map[string]string{}
	if err != nil {
		return m
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[0] == "->" && f[1] != "RemoteAddress:Port" && f[3] != "0" {
			host, _, _ := net.SplitHostPort(f[1])
			m[host] = f[3]
		}
	}
	return m
}

// Get returns the body of GET url through c, trimmed, or "ERROR <err>" when the
// request fails (for assertions and logs).
func Get(c *http.Client, url string) string {
	resp, err := c.Get(url)
	if err != nil {
		return "ERROR " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// SameKeys reports whether a and b have the same keys (e.g. the same destinations,
// whatever their weights).
func SameKeys(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}
