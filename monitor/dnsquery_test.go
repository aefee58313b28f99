package monitor

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a real DNS server on a loopback UDP socket, written with dnsmessage.
type dnsServer struct {
	conn    *net.UDPConn
	port    uint16
	rcode   atomic.Int64 // dnsmessage.RCode to answer with
	silent  atomic.Bool  // drop queries (timeout)
	wrongID atomic.Bool  // first send a reply with a wrong ID
	mu      sync.Mutex
	seen    map[string]int // "name type" -> count
	rd      bool
}

func newDNSServer(t *testing.T) *dnsServer {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{conn: c, port: uint16(c.LocalAddr().(*net.UDPAddr).Port), seen: map[string]int{}}
	t.Cleanup(func() { c.Close() })
	go s.serve()
	return s
}

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		s.mu.Lock()
		s.seen[q.Name.String()+" "+strings.TrimPrefix(q.Type.String(), "Type")]++
		s.rd = h.RecursionDesired
		s.mu.Unlock()
		if s.silent.Load() {
			continue
		}
		rc := dnsmessage.RCode(s.rcode.Load())
		reply := func(id uint16) {
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, Response: true, RCode: rc, RecursionDesired: h.RecursionDesired})
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if rc == dnsmessage.RCodeSuccess {
				rh := dnsmessage.ResourceHeader{Name: q.Name, Type: q.Type, Class: dnsmessage.ClassINET, TTL: 60}
				if q.Type == dnsmessage.TypeA {
					b.AResource(rh, dnsmessage.AResource{A: [4]byte{192, 0, 2, 1}})
				} else {
					b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr("2001:db8::1").As16()})
				}
			}
			msg, _ := b.Finish()
			s.conn.WriteToUDPAddrPort(msg, from)
		}
		if s.wrongID.Load() {
			reply(h.ID + 1)
		}
		reply(h.ID)
	}
}

func dnsCheck(t *testing.T, m *Manager, s *dnsServer, kv ...string) Checker {
	t.Helper()
	kv = append([]string{"dnsquery.port", strconv.Itoa(int(s.port))}, kv...)
	// The service port is irrelevant to DNSQuery.
	return checkerFor(t, m, testService("svc", []string{"DNSQuery"}, kv...), "DNSQuery", loopback(80), nil)
}

func TestDNSQueryAnswers(t *testing.T) {
	m, reg := newTestManager(t)
	s := newDNSServer(t)
	hosts := "['en.wikipedia.org', 'www.example.org.']"
	cases := []struct {
		name   string
		rcode  dnsmessage.RCode
		kv     []string
		up     bool
		reason string
	}{
		{"answer", dnsmessage.RCodeSuccess, nil, true, ""},
		{"nxdomain is up by default", dnsmessage.RCodeNameError, nil, true, ""},
		{"nxdomain fails when asked", dnsmessage.RCodeNameError, []string{"dnsquery.fail-on-nxdomain", "yes"}, false, " NXDOMAIN"},
		{"servfail", dnsmessage.RCodeServerFailure, nil, false, "DNS server error, query: "},
		{"refused", dnsmessage.RCodeRefused, nil, false, "DNS query refused, query: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.rcode.Store(int64(c.rcode))
			r := dnsCheck(t, m, s, append([]string{"dnsquery.hostnames", hosts}, c.kv...)...).Check(ctxTimeout(t, 5*time.Second))
			if r.Up != c.up || !strings.Contains(r.Reason, c.reason) {
				t.Fatalf("got %+v, want up=%v reason ~%q", r, c.up, c.reason)
			}
		})
	}
	if _, ok := metricValue(t, reg, "pybal_monitor_dnsquery_request_duration_seconds", map[string]string{"result": "failed"}); !ok {
		t.Error("no failed duration series")
	}
}

// Each check asks a random hostname for a random A or AAAA, with RD set.
func TestDNSQueryRandomNameAndType(t *testing.T) {
	m, _ := newTestManager(t)
	s := newDNSServer(t)
	ck := dnsCheck(t, m, s, "dnsquery.hostnames", "['a.example', 'b.example']")
	for range 60 {
		if r := ck.Check(ctxTimeout(t, 5*time.Second)); !r.Up {
			t.Fatal(r)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range []string{"a.example. A", "a.example. AAAA", "b.example. A", "b.example. AAAA"} {
		if s.seen[k] == 0 {
			t.Errorf("never asked %s: %v", k, s.seen)
		}
	}
	if !s.rd {
		t.Error("recursion desired not set")
	}
}

func TestDNSQueryTimeoutAndWrongID(t *testing.T) {
	m, _ := newTestManager(t)
	s := newDNSServer(t)
	s.wrongID.Store(true)
	if r := dnsCheck(t, m, s, "dnsquery.hostnames", "['a.example']").Check(ctxTimeout(t, 5*time.Second)); !r.Up {
		t.Fatalf("reply with a wrong ID first: %+v", r)
	}
	s.silent.Store(true)
	start := time.Now()
	r := dnsCheck(t, m, s, "dnsquery.hostnames", "['a.example']").Check(ctxTimeout(t, 200*time.Millisecond))
	if r.Up || (r.Reason != "DNS query timeout, query: a.example A" && r.Reason != "DNS query timeout, query: a.example AAAA") {
		t.Fatalf("got %+v", r)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("timeout took %v", el)
	}
}

// No DNS server: ICMP port unreachable fails the query at once.
func TestDNSQueryNoServer(t *testing.T) {
	m, _ := newTestManager(t)
	port := closedUDPPort(t)
	ck := checkerFor(t, m, testService("svc", []string{"DNSQuery"}, "dnsquery.hostnames", "['a.example']",
		"dnsquery.port", strconv.Itoa(int(port))), "DNSQuery", loopback(80), nil)
	r := ck.Check(ctxTimeout(t, 5*time.Second))
	if r.Up || !strings.Contains(r.Reason, "connection refused") {
		t.Fatalf("got %+v", r)
	}
}

// Without dnsquery.port the query goes to port 53 (PyBal).
func TestDNSQueryDefaultPort(t *testing.T) {
	v := newValidator(testService("svc", []string{"DNSQuery"}, "dnsquery.hostnames", "['a.example']"), "DNSQuery")
	c := parseDNSQuery(v, loopback(8080)).(*dnsQueryConfig)
	if c.target() != "127.0.0.1:53" {
		t.Fatalf("target %s", c.target())
	}
}

func closedUDPPort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	p := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	c.Close()
	return p
}
