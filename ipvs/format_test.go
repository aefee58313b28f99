package ipvs

import (
	"bufio"
	"bytes"
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func key(proto Protocol, addr string, port uint16) ServiceKey {
	return ServiceKey{Protocol: proto, Addr: netip.MustParseAddr(addr), Port: port}
}

func dest(addr string, port uint16, w int) Destination {
	return Destination{Addr: netip.MustParseAddr(addr), Port: port, Weight: w}
}

// fixture reads PyBal's expected ipvsadm lines: operation+input -> line.
func fixture(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("testdata/ipvsadm-commands.expected.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) == 3 {
			out[cols[0]+" "+cols[1]] = cols[2]
		}
	}
	return out
}

// The PyBal fixture rows that kubal's operations can express (numeric addresses;
// weight None has no kubal equivalent: kubal always prints -w).
func TestCommandsMatchPyBalFixture(t *testing.T) {
	fx := fixture(t)
	v6 := key(TCP, "2620::123", 443)
	v4u := key(UDP, "208.0.0.1", 123)
	lo := key(TCP, "127.0.0.1", 80)
	tests := []struct {
		row  string
		got  string
		want string // "" = the fixture's line as is
	}{
		{row: "subCommandService ('tcp','2620::123',443)", got: serviceSpec(v6)},
		{row: "subCommandService ('udp','208.0.0.1',123)", got: serviceSpec(v4u)},
		{row: "subCommandServer host=localhost ip=127.0.0.1", got: realSpec(lo, dest("127.0.0.1", 0, 1))},
		{row: "commandRemoveService ('tcp','2620::123',443)", got: DeleteServiceCommand(v6)},
		{row: "commandRemoveService ('udp','208.0.0.1',123)", got: DeleteServiceCommand(v4u)},
		{row: "commandAddService ('udp','208.0.0.1',123,'rr')", got: AddServiceCommand(Service{ServiceKey: v4u, Scheduler: "rr"})},
		{row: "commandAddService ('tcp','2620::123',443)", got: AddServiceCommand(Service{ServiceKey: v6})},
		{row: "LVSService.addServer server 127.0.0.1 not yet present", got: AddDestinationCommand(lo, dest("127.0.0.1", 0, 7)),
			want: "-a -t 127.0.0.1:80 -r 127.0.0.1 -w 7"},
		{row: "LVSService.addServer same server again", got: UpdateDestinationCommand(lo, dest("127.0.0.1", 80, 7)),
			want: "-e -t 127.0.0.1:80 -r 127.0.0.1 -w 7"},
		{row: "LVSService.removeServer server 127.0.0.1", got: DeleteDestinationCommand(lo, dest("127.0.0.1", 0, 7))},
	}
	for _, tt := range tests {
		line, ok := fx[tt.row]
		if !ok {
			t.Fatalf("fixture row %q missing", tt.row)
		}
		want := tt.want
		if want == "" {
			want = line
		} else if !strings.HasPrefix(want, line) {
			// kubal's line is PyBal's plus the always-printed weight.
			t.Fatalf("row %q: %q does not extend the fixture's %q", tt.row, want, line)
		}
		if tt.got != want {
			t.Errorf("%s: got %q, want %q", tt.row, tt.got, want)
		}
	}
	// The weighted rows use a hostname; the rest of the line must match exactly.
	for row, d := range map[string]Destination{
		"commandAddServer ('tcp','2620::123',443) host=localhost weight=25":  dest("2620::1", 0, 25),
		"commandEditServer ('tcp','2620::123',443) host=localhost weight=25": dest("2620::1", 443, 25),
	} {
		var got string
		if strings.HasPrefix(row, "commandAdd") {
			got = AddDestinationCommand(v6, d)
		} else {
			got = UpdateDestinationCommand(v6, d)
		}
		if want := strings.Replace(fx[row], "localhost", "2620::1", 1); got != want {
			t.Errorf("%s: got %q, want %q", row, got, want)
		}
	}
	// createService's second line: -A ... -s rr -o for an OPS UDP service.
	if got, want := AddServiceCommand(Service{ServiceKey: key(UDP, "127.0.0.1", 53), Scheduler: "rr", OPS: true}),
		"-A -u 127.0.0.1:53 -s rr -o"; !strings.HasSuffix(fx["LVSService.createService ('udp','127.0.0.1',53,'rr',True)"], want) || got != want {
		t.Errorf("createService ops: got %q, want %q", got, want)
	}
}

func TestCommands(t *testing.T) {
	k := key(TCP, "10.0.0.1", 80)
	k6 := key(UDP, "2001:db8::1", 53)
	tests := []struct{ got, want string }{
		{AddServiceCommand(Service{ServiceKey: k, Scheduler: "wrr"}), "-A -t 10.0.0.1:80 -s wrr"},
		{AddServiceCommand(Service{ServiceKey: k, Scheduler: "sh", Flags: []string{"sh-port", "sh-fallback"}}), "-A -t 10.0.0.1:80 -s sh -b sh-fallback,sh-port"},
		{AddServiceCommand(Service{ServiceKey: k, Scheduler: "mh", Flags: []string{"mh-port"}}), "-A -t 10.0.0.1:80 -s mh -b mh-port"},
		{UpdateServiceCommand(Service{ServiceKey: k6, Scheduler: "rr", OPS: true}), "-E -u [2001:db8::1]:53 -s rr -o"},
		{AddDestinationCommand(k, dest("10.0.1.5", 0, 0)), "-a -t 10.0.0.1:80 -r 10.0.1.5 -w 0"},
		{AddDestinationCommand(k, dest("10.0.1.5", 8080, 10)), "-a -t 10.0.0.1:80 -r 10.0.1.5:8080 -w 10"},
		{AddDestinationCommand(k, Destination{Addr: netip.MustParseAddr("10.0.1.5"), Weight: 3, Forwarding: Tunnel}), "-a -t 10.0.0.1:80 -r 10.0.1.5 -w 3 -i"},
		{UpdateDestinationCommand(k, Destination{Addr: netip.MustParseAddr("10.0.1.5"), Weight: 3, Forwarding: NAT}), "-e -t 10.0.0.1:80 -r 10.0.1.5 -w 3 -m"},
		{AddDestinationCommand(k6, dest("2001:db8::5", 5353, 1)), "-a -u [2001:db8::1]:53 -r [2001:db8::5]:5353 -w 1"},
		{DeleteDestinationCommand(k6, dest("2001:db8::5", 53, 1)), "-d -u [2001:db8::1]:53 -r 2001:db8::5"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestDryRunPrintsAndKeepsState(t *testing.T) {
	var buf bytes.Buffer
	d := NewDryRun(&buf)
	ctx := context.Background()
	k := key(TCP, "10.0.0.1", 80)
	steps := []func() error{
		func() error { return d.AddService(ctx, Service{ServiceKey: k, Scheduler: "wrr"}) },
		func() error { return d.AddDestination(ctx, k, dest("10.0.1.1", 0, 10)) },
		func() error { return d.UpdateDestination(ctx, k, dest("10.0.1.1", 0, 0)) },
		func() error { return d.DeleteDestination(ctx, k, dest("10.0.1.1", 80, 0)) },
		func() error { return d.DeleteService(ctx, k) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	// A failing operation (no such service) prints nothing.
	if err := d.DeleteService(ctx, k); err == nil {
		t.Fatal("deleting a missing service succeeded")
	}
	want := "-A -t 10.0.0.1:80 -s wrr\n-a -t 10.0.0.1:80 -r 10.0.1.1 -w 10\n-e -t 10.0.0.1:80 -r 10.0.1.1 -w 0\n-d -t 10.0.0.1:80 -r 10.0.1.1\n-D -t 10.0.0.1:80\n"
	if buf.String() != want {
		t.Errorf("dry run output:\n%s\nwant:\n%s", buf.String(), want)
	}
	if s, _ := d.Services(ctx); len(s) != 0 {
		t.Errorf("services left: %v", s)
	}
}
