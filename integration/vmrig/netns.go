package vmrig

import (
	"fmt"
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
