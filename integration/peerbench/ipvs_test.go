package peerbench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// table is the director's IPVS table as /proc/net/ip_vs shows it: "vip:port" ->
// scheduler and destinations ("ip" -> weight). One read, no netlink dump per service,
// so polling it costs the daemons under test little.
type table map[string]*vs

type vs struct {
	sched string
	dests map[string]int
}

func readTable() (table, error) {
	b, err := os.ReadFile("/proc/net/ip_vs")
	if err != nil {
		return nil, err
	}
	return parseTable(b)
}

// parseTable reads /proc/net/ip_vs text (hex addresses and ports).
func parseTable(b []byte) (table, error) {
	t := table{}
	var cur *vs
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && (f[0] == "TCP" || f[0] == "UDP"):
			key, err := hexAddr(f[1])
			if err != nil {
				return nil, err
			}
			cur = &vs{sched: f[2], dests: map[string]int{}}
			t[key] = cur
		case len(f) >= 4 && f[0] == "->" && cur != nil && f[1] != "RemoteAddress:Port":
			key, err := hexAddr(f[1])
			if err != nil {
				return nil, err
			}
			w, err := strconv.Atoi(f[3])
			if err != nil {
				return nil, fmt.Errorf("weight %q: %w", f[3], err)
			}
			ip, _, _ := strings.Cut(key, ":")
			cur.dests[ip] = w
		}
	}
	return t, sc.Err()
}

// hexAddr turns "0A640001:0050" into "10.100.0.1:80" (IPv4 only: the rig has no IPv6).
func hexAddr(s string) (string, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok || len(a) != 8 {
		return "", fmt.Errorf("address %q: not IPv4 hex", s)
	}
	n, err := strconv.ParseUint(a, 16, 32)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", s, err)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return "", fmt.Errorf("port %q: %w", s, err)
	}
	return fmt.Sprintf("%d.%d.%d.%d:%d", n>>24, n>>16&255, n>>8&255, n&255, port), nil
}

// in reports whether real server ip is in service key with a weight above 0.
func (t table) in(key, ip string) bool {
	s := t[key]
	return s != nil && s.dests[ip] > 0
}

// complete reports whether every service of d is there with every real server at
// weight > 0.
func (t table) complete(d desc) bool {
	for _, s := range d.services {
		key := fmt.Sprintf("%s:%d", s.vip, s.port)
		for _, ip := range s.servers {
			if !t.in(key, ip) {
				return false
			}
		}
	}
	return true
}
