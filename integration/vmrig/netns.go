package vmrig

import (
	"fmt"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNS runs fn on an OS thread switched into the named network namespace. Sockets
// created there (a listener, or a client socket of a Dial) stay in that namespace,
// whichever goroutine uses them later.
func InNS(name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked: it dies with the goroutine instead of running
		// other goroutines in the wrong namespace.
		return fmt.Errorf("restore netns after %s: %w", name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Bridge runs, with /bin/sh, the shell lines topology after a prelude that makes the
// bridge br0 (10.0.0.1/24, in the root namespace: the director) and defines
// `add NS ADDR`: a namespace NS whose eth0 (ADDR/24) hangs off br0. `ip` in topology
// is /sbin/ip; the script stops at the first failing command.
func Bridge(topology string) error {
	script := `set -e
ip() { /sbin/ip "$@"; }
ip link add br0 type bridge
ip link set br0 up
ip addr add 10.0.0.1/24 dev br0
add() { # ns addr
	ip netns add $1
	ip link add v$1 type veth peer name eth0 netns $1
	ip link set v$1 master br0
	ip link set v$1 up
	ip -n $1 link set lo up
	ip -n $1 addr add $2/24 dev eth0
	ip -n $1 link set eth0 up
}
` + topology
	if out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput(); err != nil {
		return fmt.Errorf("network: %w: %s", err, out)
	}
	return nil
}
