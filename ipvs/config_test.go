package ipvs

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kubal/kubal/config"
)

func TestPoolOf(t *testing.T) {
	s := &config.Service{Protocol: "udp", IP: netip.MustParseAddr("10.0.0.1"), Port: 53, Scheduler: "mh", OPS: true,
		Forwarding: config.ForwardTunnel, SchedulerFlags: []string{"mh-port"}, DepoolMode: config.DepoolDrain,
		DrainTimeout: 5 * time.Second, VIPInterface: "eth0"}
	p := PoolOf(s, []Destination{dest("10.0.1.1", 0, 0)})
	if got, want := AddServiceCommand(p.Service), "-A -u 10.0.0.1:53 -s mh -b mh-port -o"; got != want {
		t.Errorf("service %q, want %q", got, want)
	}
	if got, want := AddDestinationCommand(p.Service.ServiceKey, p.Destinations[0]), "-a -u 10.0.0.1:53 -r 10.0.1.1 -w 0 -i"; got != want {
		t.Errorf("destination %q, want %q", got, want)
	}
	if !p.Drain || p.DrainTimeout != 5*time.Second {
		t.Errorf("drain %v %v", p.Drain, p.DrainTimeout)
	}
	if v := VIPOf(s); v.Interface != "eth0" || v.Addr != s.IP {
		t.Errorf("VIP %+v", v)
	}
	s.Forwarding, s.DepoolMode = "", config.DepoolDelete
	if p := PoolOf(s, []Destination{dest("10.0.1.1", 0, 1)}); p.Destinations[0].Forwarding != DR || p.Drain {
		t.Errorf("defaults: %+v", p)
	}
}
