//go:build !linux

package ipvs

import (
	"errors"
	"log/slog"
)

var errNotLinux = errors.New("ipvs: IPVS exists only on Linux")

// Netlink is the kernel Backend; it exists only on Linux.
type Netlink struct{ Fake }

// NewNetlink fails: IPVS exists only on Linux.
func NewNetlink(netnsPath string) (*Netlink, error) { return nil, errNotLinux }

// CheckKernel fails: IPVS exists only on Linux.
func CheckKernel() error { return errNotLinux }

// Close does nothing.
func (n *Netlink) Close() {}

// NewAddresses fails: netlink addresses exist only on Linux.
func NewAddresses(netnsPath string, log *slog.Logger) (*Addresses, error) { return nil, errNotLinux }
