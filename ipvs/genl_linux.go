//go:build linux

package ipvs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// genlWriter sends IPVS change requests over its own generic netlink socket, many per
// sendmsg: the kernel handles every message of the buffer in order and queues one
// acknowledgement each, so a pool of 100 destinations costs one round trip instead of
// 100 (moby/ipvs waits for each). Dumps stay with moby/ipvs.
type genlWriter struct {
	fd     int
	family uint16
	seq    uint32
	buf    []byte
	rbuf   []byte
}

// IPVS generic netlink commands and attributes (include/uapi/linux/ip_vs.h).
const (
	ipvsCmdNewService = 1
	ipvsCmdSetService = 2
	ipvsCmdDelService = 3
	ipvsCmdNewDest    = 5
	ipvsCmdSetDest    = 6
	ipvsCmdDelDest    = 7

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF        = 1
	ipvsSvcAttrProtocol  = 2
	ipvsSvcAttrAddr      = 3
	ipvsSvcAttrPort      = 4
	ipvsSvcAttrFWMark    = 5
	ipvsSvcAttrSchedName = 6
	ipvsSvcAttrFlags     = 7
	ipvsSvcAttrTimeout   = 8
	ipvsSvcAttrNetmask   = 9

	ipvsDestAttrAddr      = 1
	ipvsDestAttrPort      = 2
	ipvsDestAttrFwdMethod = 3
	ipvsDestAttrWeight    = 4
	ipvsDestAttrUThresh   = 5
	ipvsDestAttrLThresh   = 6
	ipvsDestAttrAddrFam   = 11

	// batchMax bounds one sendmsg: its acknowledgements must fit the receive buffer.
	batchMax = 128
)

func newGenlWriter(netnsPath string) (*genlWriter, error) {
	fam, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		return nil, fmt.Errorf("ipvs: generic netlink family: %w", err)
	}
	fd, err := socketIn(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("ipvs: netlink socket in netns %q: %w", netnsPath, err)
	}
	w := &genlWriter{fd: fd, family: fam.ID, rbuf: make([]byte, 64<<10)}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ipvs: bind netlink socket: %w", err)
	}
	// Room for a batch of acknowledgements; errors echo only the header (CAP_ACK).
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	tv := unix.Timeval{Sec: 10}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return w, nil
}

// socketIn opens a generic netlink socket in the network namespace at path ("" =
// current), from a thread switched there for the call.
func socketIn(path string) (int, error) {
	if path == "" {
		return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err := netns.Set(orig); err != nil {
		// The thread stays locked and dies with this goroutine rather than run
		// other goroutines in the wrong namespace.
		if serr == nil {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	return fd, serr
}

func (w *genlWriter) close() { unix.Close(w.fd) }

// apply sends cs in batches and returns one error per change.
func (w *genlWriter) apply(ctx context.Context, cs []change) []error {
	errs := make([]error, len(cs))
	for start := 0; start < len(cs); start += batchMax {
		if err := ctx.Err(); err != nil {
			for i := start; i < len(cs); i++ {
				errs[i] = err
			}
			break
		}
		end := min(start+batchMax, len(cs))
		w.batch(cs[start:end], errs[start:end])
	}
	return errs
}

func (w *genlWriter) batch(cs []change, errs []error) {
	w.buf = w.buf[:0]
	base := w.seq + 1
	for i, c := range cs {
		if err := w.encode(c, base+uint32(i)); err != nil {
			errs[i] = err
		}
	}
	w.seq += uint32(len(cs))
	pending := 0
	for _, e := range errs {
		if e == nil {
			pending++
		}
	}
	if pending == 0 {
		return
	}
	fail := func(err error) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	if err := unix.Sendto(w.fd, w.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		fail(fmt.Errorf("netlink send: %w", err))
		return
	}
	acked := make([]bool, len(cs))
	for pending > 0 {
		n, _, err := unix.Recvfrom(w.fd, w.rbuf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// ENOBUFS (acknowledgements dropped) or a timeout: the outcome of the
			// rest is unknown; the Reconciler re-dumps after any error.
			for i := range errs {
				if !acked[i] && errs[i] == nil {
					errs[i] = fmt.Errorf("netlink receive: %w", err)
				}
			}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(w.rbuf[:n])
		if err != nil {
			fail(fmt.Errorf("netlink parse: %w", err))
			return
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			i := int(m.Header.Seq - base)
			if i < 0 || i >= len(cs) || acked[i] {
				continue
			}
			acked[i] = true
			pending--
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				errs[i] = syscall.Errno(-code)
			}
		}
	}
}

// Netlink attribute encoding into w.buf.
func (w *genlWriter) attr(typ uint16, data []byte) {
	l := 4 + len(data)
	w.buf = binary.NativeEndian.AppendUint16(w.buf, uint16(l))
	w.buf = binary.NativeEndian.AppendUint16(w.buf, typ)
	w.buf = append(w.buf, data...)
	for len(w.buf)%4 != 0 {
		w.buf = append(w.buf, 0)
	}
}

func (w *genlWriter) u16(typ, v uint16) { w.attr(typ, binary.NativeEndian.AppendUint16(nil, v)) }
func (w *genlWriter) u32(typ uint16, v uint32) {
	w.attr(typ, binary.NativeEndian.AppendUint32(nil, v))
}
func (w *genlWriter) be16(typ, v uint16) { w.attr(typ, binary.BigEndian.AppendUint16(nil, v)) }

// nest starts a nested attribute and returns a function that closes it.
func (w *genlWriter) nest(typ uint16) func() {
	at := len(w.buf)
	w.buf = append(w.buf, 0, 0, 0, 0)
	binary.NativeEndian.PutUint16(w.buf[at+2:], typ)
	return func() { binary.NativeEndian.PutUint16(w.buf[at:], uint16(len(w.buf)-at)) }
}

var errUnsupported = errors.New("unsupported operation")

func (w *genlWriter) encode(c change, seq uint32) error {
	var cmd uint8
	full := false
	switch c.kind {
	case OpAddService:
		cmd, full = ipvsCmdNewService, true
	case OpUpdateService:
		cmd, full = ipvsCmdSetService, true
	case OpDeleteService:
		cmd = ipvsCmdDelService
	case OpAddDestination:
		cmd = ipvsCmdNewDest
	case OpUpdateDestination:
		cmd = ipvsCmdSetDest
	case OpDeleteDestination:
		cmd = ipvsCmdDelDest
	default:
		return fmt.Errorf("%w: %s", errUnsupported, c.kind)
	}
	svc := c.svc
	if !full {
		svc = Service{ServiceKey: c.k}
	}
	ks, err := toKernelService(svc)
	if err != nil {
		return err
	}
	var kd *kernelDest
	if cmd >= ipvsCmdNewDest {
		d, err := toKernelDest(c.k, c.d)
		if err != nil {
			return err
		}
		kd = &kernelDest{addr: d.Address, port: d.Port, fwd: d.ConnectionFlags, weight: uint32(d.Weight), af: d.AddressFamily}
	}

	at := len(w.buf)
	w.buf = append(w.buf, make([]byte, unix.NLMSG_HDRLEN)...)
	w.buf = append(w.buf, cmd, 1, 0, 0) // genlmsghdr: cmd, version 1
	end := w.nest(ipvsCmdAttrService)
	w.u16(ipvsSvcAttrAF, ks.AddressFamily)
	if ks.FWMark != 0 {
		w.u32(ipvsSvcAttrFWMark, ks.FWMark)
	} else {
		w.u16(ipvsSvcAttrProtocol, ks.Protocol)
		w.attr(ipvsSvcAttrAddr, ipBytes(ks.Address))
		w.be16(ipvsSvcAttrPort, ks.Port)
	}
	if full {
		w.attr(ipvsSvcAttrSchedName, append([]byte(ks.SchedName), 0))
		w.attr(ipvsSvcAttrFlags, binary.NativeEndian.AppendUint32(binary.NativeEndian.AppendUint32(nil, ks.Flags), 0xFFFFFFFF))
		w.u32(ipvsSvcAttrTimeout, ks.Timeout)
		w.u32(ipvsSvcAttrNetmask, ks.Netmask)
	}
	end()
	if kd != nil {
		end := w.nest(ipvsCmdAttrDest)
		w.attr(ipvsDestAttrAddr, ipBytes(kd.addr))
		w.be16(ipvsDestAttrPort, kd.port)
		w.u16(ipvsDestAttrAddrFam, kd.af)
		w.u32(ipvsDestAttrFwdMethod, kd.fwd)
		w.u32(ipvsDestAttrWeight, kd.weight)
		w.u32(ipvsDestAttrUThresh, 0)
		w.u32(ipvsDestAttrLThresh, 0)
		end()
	}
	h := w.buf[at:]
	binary.NativeEndian.PutUint32(h[0:], uint32(len(h)))
	binary.NativeEndian.PutUint16(h[4:], w.family)
	binary.NativeEndian.PutUint16(h[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(h[8:], seq)
	return nil
}

type kernelDest struct {
	addr   []byte
	port   uint16
	fwd    uint32
	weight uint32
	af     uint16
}

func ipBytes(ip []byte) []byte {
	if len(ip) == 16 {
		if v4 := ip[:12]; string(v4) == "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff" {
			return ip[12:]
		}
	}
	return ip
}
