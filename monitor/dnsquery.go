package monitor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsQueryConfig is DNSQuery (SPEC §3.5) plus kubal's port (PyBal: always 53).
type dnsQueryConfig struct {
	common
	hostnames      []string
	interval       time.Duration
	timeout        time.Duration
	failOnNXDomain bool
}

func parseDNSQuery(v *validator, t Target) spec {
	c := &dnsQueryConfig{common: v.common(t)}
	c.port = v.port(53)
	c.interval = v.seconds("interval", 10*time.Second, false)
	c.timeout = v.seconds("timeout", 5*time.Second, false)
	c.failOnNXDomain = v.bool("fail-on-nxdomain", false)
	for _, h := range v.strings("hostnames", true) {
		if _, err := dnsmessage.NewName(fqdn(h)); err != nil || h == "" {
			v.errf("hostnames", "bad hostname %q", h)
			continue
		}
		c.hostnames = append(c.hostnames, h)
	}
	return c
}

func fqdn(h string) string {
	if strings.HasSuffix(h, ".") {
		return h
	}
	return h + "."
}

func (c *dnsQueryConfig) key() string { return c.common.key() }

func (c *dnsQueryConfig) newRunner(e *env) runner {
	return e.newLoop(c.interval, c.timeout, &DNSQuery{cfg: c, env: e})
}

// DNSQuery asks the server for a random A or AAAA record of one of the hostnames.
// Any answer is up; NXDOMAIN is up unless fail-on-nxdomain.
type DNSQuery struct {
	cfg *dnsQueryConfig
	env *env
}

// Check sends one query.
func (q *DNSQuery) Check(ctx context.Context) Result {
	name := q.cfg.hostnames[rand.IntN(len(q.cfg.hostnames))]
	typ := dnsmessage.TypeA
	if rand.IntN(2) == 1 {
		typ = dnsmessage.TypeAAAA
	}
	start := q.env.clk.Now()
	r := q.query(ctx, name, typ)
	d := q.env.clk.Now().Sub(start).Seconds()
	q.env.each(func(service, host string) {
		q.env.metrics.dnsDuration.WithLabelValues(service, host, "DNSQuery", resultLabel(r.Up)).Set(d)
	})
	return r
}

func typeText(t dnsmessage.Type) string { return strings.TrimPrefix(t.String(), "Type") }

func (q *DNSQuery) query(ctx context.Context, name string, typ dnsmessage.Type) Result {
	queryStr := fmt.Sprintf(", query: %s %s", name, typeText(typ))
	id := uint16(rand.Uint32())
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	qn, _ := dnsmessage.NewName(fqdn(name)) // validated at parse time
	if err := b.StartQuestions(); err != nil {
		return Result{Reason: err.Error()}
	}
	if err := b.Question(dnsmessage.Question{Name: qn, Type: typ, Class: dnsmessage.ClassINET}); err != nil {
		return Result{Reason: err.Error()}
	}
	msg, err := b.Finish()
	if err != nil {
		return Result{Reason: err.Error()}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", q.cfg.target())
	if err != nil {
		return Result{Reason: err.Error() + queryStr}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(msg); err != nil {
		return q.failure(ctx, err, queryStr)
	}
	buf := make([]byte, 1500)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return q.failure(ctx, err, queryStr)
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil || h.ID != id || !h.Response {
			continue // not our answer (stale or spoofed): keep waiting
		}
		switch h.RCode {
		case dnsmessage.RCodeSuccess:
			return Result{Up: true}
		case dnsmessage.RCodeNameError:
			if q.cfg.failOnNXDomain {
				return Result{Reason: name + " NXDOMAIN"}
			}
			q.env.log.Info("DNSQuery NXDOMAIN", "query", name, "type", typeText(typ))
			return Result{Up: true}
		case dnsmessage.RCodeServerFailure:
			return Result{Reason: "DNS server error" + queryStr}
		case dnsmessage.RCodeRefused:
			return Result{Reason: "DNS query refused" + queryStr}
		default:
			return Result{Reason: fmt.Sprintf("DNS error %s%s", strings.TrimPrefix(h.RCode.String(), "RCode"), queryStr)}
		}
	}
}

func (q *DNSQuery) failure(ctx context.Context, err error, queryStr string) Result {
	if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
		return Result{Reason: "DNS query timeout" + queryStr}
	}
	return Result{Reason: err.Error() + queryStr}
}
