package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Key identifies the IPVS virtual service, "proto ip:port" (IPv6 in brackets), for
// matching services across reloads whatever their section names.
func (s *Service) Key() string {
	return s.Protocol + " " + netip.AddrPortFrom(s.IP, s.Port).String()
}

// Summary describes the services for `kubal --check-config`: one line per service
// with its pool name, protocol, VIP:port, scheduler, forwarding, server source,
// monitors and depool threshold, after a line on the global settings.
func (c *Config) Summary() string {
	var b strings.Builder
	g := &c.Global
	fmt.Fprintf(&b, "%s: %d service(s)", c.Path, len(c.Services))
	if g.BGP {
		peers := make([]string, len(g.BGPPeerAddresses))
		for i, a := range g.BGPPeerAddresses {
			peers[i] = a.String()
		}
		fmt.Fprintf(&b, "; bgp: AS%d, peers %s", g.BGPLocalASN, strings.Join(peers, ","))
	} else {
		b.WriteString("; bgp: off")
	}
	if g.Instrumentation {
		fmt.Fprintf(&b, "; instrumentation: %s port %d", strings.Join(quoteEmpty(g.InstrumentationIPs), ","), g.InstrumentationPort)
	} else {
		b.WriteString("; instrumentation: off")
	}
	if g.DryRun {
		b.WriteString("; dry-run")
	}
	b.WriteString("\n")
	if t := c.K8sServices; t != nil {
		ranges := make([]string, len(t.VIPRanges))
		for i, r := range t.VIPRanges {
			ranges[i] = r.String()
		}
		fmt.Fprintf(&b, "[%s]: Services of loadBalancerClass %s", K8sServicesSection, t.Class)
		if t.AnnotatedNodePorts {
			b.WriteString(" and annotated NodePorts")
		}
		nodes := t.Nodes
		if nodes == "" {
			nodes = "all"
		}
		if len(ranges) == 0 {
			ranges = []string{"none (every Service requests its VIP)"}
		}
		fmt.Fprintf(&b, "; nodes %s; vip-ranges %s\n", nodes, strings.Join(ranges, ","))
	}
	if len(c.Services) == 0 {
		return b.String()
	}
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tSERVICE\tSCHED\tFWD\tTHRESHOLD\tMONITORS\tSOURCE")
	for _, s := range c.Services {
		sched := s.Scheduler
		if len(s.SchedulerFlags) > 0 {
			sched += "(" + strings.Join(s.SchedulerFlags, ",") + ")"
		}
		if s.OPS {
			sched += " ops"
		}
		mons := strings.Join(s.Monitors, ",")
		if mons == "" {
			mons = "-"
		}
		fwd := string(s.Forwarding)
		if s.DepoolMode == DepoolDrain {
			fwd += " drain"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Key(), sched, fwd,
			strconv.FormatFloat(s.DepoolThreshold, 'g', -1, 64), mons, s.ConfigURL)
	}
	tw.Flush()
	return b.String()
}

func quoteEmpty(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		if s == "" {
			s = `""(all)`
		}
		out[i] = s
	}
	return out
}
