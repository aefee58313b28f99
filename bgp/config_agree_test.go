package bgp

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubal/kubal/config"
)

// One validation (issue 12): every config that config.Parse accepts is one bgp.New
// accepts, so --check-config never passes a config the daemon refuses at start.

// agreeService is a valid service; %s is its ip.
const agreeService = "[svc]\nprotocol = tcp\nip = %s\nport = 80\nscheduler = wrr\nconfig = file:///etc/pybal/pools/svc\nmonitors = ['IdleConnection']\n"

func checkAgree(t *testing.T, text string) (accepted bool) {
	t.Helper()
	cfg, err := config.Parse("agree.conf", []byte(text))
	if err != nil {
		return false
	}
	if _, err := New(cfg.Global, nil, nil); err != nil {
		t.Errorf("config.Parse accepts but bgp.New refuses: %v\nconfig:\n%s", err, text)
	}
	return true
}

func TestConfigAcceptedIsAcceptedByNew(t *testing.T) {
	base := "bgp = yes\nbgp-local-asn = 64600\nbgp-peer-address = 192.0.2.254\n"
	tests := []struct {
		name   string
		global string
		ip     string
		accept bool // what config.Parse must say
	}{
		// Both passed config and failed bgp.New before (issue 12 item 8).
		{"IPv6-only, no router ID", base + "bgp-nexthop-ipv6 = 2001:db8::1\n", "2001:db8::80", false},
		{"IPv6-only, router ID from bgp-local-ips", base + "bgp-nexthop-ipv6 = 2001:db8::1\nbgp-local-ips = ['192.0.2.10']\n", "2001:db8::80", true},
		{"IPv6-only, router ID from next hop", base + "bgp-nexthop-ipv6 = 2001:db8::1\nbgp-nexthop-ipv4 = 192.0.2.1\n", "2001:db8::80", true},
		{"well-known community", base + "bgp-nexthop-ipv4 = 192.0.2.1\nbgp-communities = no-export, 64600:1\n", "192.0.2.80", true},
		{"duplicate peer", "bgp = yes\nbgp-local-asn = 64600\nbgp-peer-address = ['192.0.2.254', '::ffff:192.0.2.254']\nbgp-nexthop-ipv4 = 192.0.2.1\n", "192.0.2.80", false},
		{"unspecified peer", "bgp = yes\nbgp-local-asn = 64600\nbgp-peer-address = 0.0.0.0\nbgp-nexthop-ipv4 = 192.0.2.1\n", "192.0.2.80", false},
		{"no peer (a warning)", "bgp = yes\nbgp-local-asn = 64600\nbgp-nexthop-ipv4 = 192.0.2.1\n", "192.0.2.80", true},
		{"bad community", base + "bgp-nexthop-ipv4 = 192.0.2.1\nbgp-communities = no-such\n", "192.0.2.80", false},
		{"bgp off needs nothing", "bgp = no\n", "2001:db8::80", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			text := "[global]\n" + tc.global + "\n" + fmt.Sprintf(agreeService, tc.ip)
			if got := checkAgree(t, text); got != tc.accept {
				_, err := config.Parse("agree.conf", []byte(text))
				t.Errorf("config.Parse accepted = %v, want %v (%v)", got, tc.accept, err)
			}
		})
	}
}

// A seeded random walk over the BGP keys, valid and invalid values mixed: whatever
// config accepts, New accepts. 3,000 configs, fixed seed.
func TestConfigAgreesWithNewRandom(t *testing.T) {
	// Per key: values config accepts on their own, then values it may refuse. Each
	// value is drawn good 7 times in 8 so that many configs pass.
	values := map[string][2][]string{
		"bgp-local-asn":        {{"64600", "4200000000"}, {"0", "x"}},
		"bgp-as-path":          {{"64600 64601", "64600"}, {"0"}},
		"bgp-med":              {{"0", "100"}, {"-1"}},
		"bgp-nexthop-ipv4":     {{"192.0.2.1"}, {"0.0.0.0", "2001:db8::1", "224.0.0.1"}},
		"bgp-nexthop-ipv6":     {{"2001:db8::1"}, {"192.0.2.1", "::"}},
		"bgp-peer-address":     {{"192.0.2.254", "['192.0.2.254', '2001:db8::fe']", "", "::ffff:192.0.2.254"}, {"['192.0.2.254', '192.0.2.254']", "::", "['fe80::1%eth0']"}},
		"bgp-local-ips":        {{"['']", "['192.0.2.10']", "['::1']", "['0.0.0.0']", "['::ffff:0.0.0.0']", "['::ffff:192.0.2.9']"}, {"['x']"}},
		"bgp-local-port":       {{"179", "65535", "1790"}, {"0"}},
		"bgp-hold-time":        {{"0", "3", "90", "65535"}, {"2", "70000"}},
		"bgp-communities":      {{"64600:1", "no-export, blackhole", "NO-ADVERTISE", "[]", "['no-export-subconfed']"}, {"65536:0", "1:2:3"}},
		"bgp-bfd":              {{"yes", "no"}, {"maybe"}},
		"bgp-bfd-min-rx":       {{"1", "300", "60000"}, {"0", "60001"}},
		"bgp-bfd-min-tx":       {{"1", "300"}, {"60001"}},
		"bgp-bfd-multiplier":   {{"1", "3", "255"}, {"0", "256"}},
		"bgp-graceful-restart": {{"yes", "no"}, {"2"}},
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	// Sorted for a reproducible walk.
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if keys[j] < keys[i] {
				keys[i], keys[j] = keys[j], keys[i]
			}
		}
	}
	ips := []string{"192.0.2.80", "2001:db8::80"}
	rng := rand.New(rand.NewPCG(12, 19))
	accepted := 0
	const n = 3000
	for i := 0; i < n; i++ {
		var b strings.Builder
		b.WriteString("[global]\nbgp = yes\n")
		for _, k := range keys {
			if rng.IntN(3) == 0 {
				continue
			}
			vs := values[k][0]
			if rng.IntN(8) == 0 {
				vs = values[k][1]
			}
			fmt.Fprintf(&b, "%s = %s\n", k, vs[rng.IntN(len(vs))])
		}
		fmt.Fprintf(&b, "\n"+agreeService, ips[rng.IntN(len(ips))])
		if checkAgree(t, b.String()) {
			accepted++
		}
		if t.Failed() {
			return
		}
	}
	t.Logf("%d of %d random configs accepted by config, all accepted by bgp.New", accepted, n)
	if accepted < n/20 {
		t.Fatalf("only %d configs accepted: the walk tests too little", accepted)
	}
}

// FuzzConfigAcceptedByNew: go test ./bgp -run '^$' -fuzz FuzzConfigAcceptedByNew -fuzztime 1m
func FuzzConfigAcceptedByNew(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("..", "config", "testdata", "*.conf"))
	for _, p := range seeds {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("[global]\nbgp = yes\nbgp-local-asn = 64600\nbgp-peer-address = 192.0.2.254\nbgp-nexthop-ipv6 = 2001:db8::1\nbgp-local-ips = ['192.0.2.10']\n\n" + fmt.Sprintf(agreeService, "2001:db8::80")))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgree(t, string(data))
	})
}
