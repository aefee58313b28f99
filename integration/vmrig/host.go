package vmrig

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The host side of the scenarios that run their test binary inside the IPVS VM with
// qemu user networking (integration/e2e, integration/k8sservices): the guest's
// initramfs is the cached base image with a payload layered on top, and the guest
// prints its verdict between console markers.

// VMCache is the directory integration/vm/setup.sh fills (vmlinuz, base.cpio.gz,
// kernel): $KUBAL_CACHE/vm, by default ~/.cache/kubal/vm.
func VMCache() string {
	c := os.Getenv("KUBAL_CACHE")
	if c == "" {
		home, _ := os.UserHomeDir()
		c = filepath.Join(home, ".cache", "kubal")
	}
	return filepath.Join(c, "vm")
}

// IsStatic reports whether path is an ELF executable without a program interpreter
// (it runs in the guest without the host's libraries).
func IsStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// CopyFile copies src to dst (mode 0755), making dst's directory.
func CopyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// CopyWithLibs puts a dynamically linked binary at dst under root and its shared
// libraries (as ldd lists them) beside it. Libraries ldd finds in libDir (if set: an
// unpacked .deb) go to the path the guest's loader searches (/lib/x86_64-linux-gnu);
// the others keep their host paths (the guest's base image has the host's loader
// layout).
func CopyWithLibs(root, bin, dst, libDir string) error {
	if err := CopyFile(bin, filepath.Join(root, dst)); err != nil {
		return err
	}
	cmd := exec.Command("ldd", bin)
	if libDir != "" {
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libDir)
	}
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", bin, err)
	}
	if bytes.Contains(out, []byte("not found")) {
		return fmt.Errorf("ldd %s: a library is missing:\n%s", bin, out)
	}
	for _, f := range strings.Fields(string(out)) {
		if !strings.HasPrefix(f, "/") {
			continue
		}
		real, err := filepath.EvalSymlinks(f)
		if err != nil {
			return err
		}
		to := f
		if libDir != "" && strings.HasPrefix(f, libDir+"/") {
			to = filepath.Join("/lib/x86_64-linux-gnu", filepath.Base(f))
		}
		if err := CopyFile(real, filepath.Join(root, to)); err != nil {
			return err
		}
	}
	return nil
}

// ModuleTree returns the guest kernel's directory (the cache's "kernel" link
// resolved) and its single lib/modules/<version> tree.
func ModuleTree(vmCache string) (kdir, mods string, err error) {
	kdir, err = filepath.EvalSymlinks(filepath.Join(vmCache, "kernel"))
	if err != nil {
		return "", "", err
	}
	m, _ := filepath.Glob(filepath.Join(kdir, "lib", "modules", "*"))
	if len(m) != 1 {
		return kdir, "", fmt.Errorf("no single module tree under %s", kdir)
	}
	return kdir, m[0], nil
}

// VirtioNetModules are the modules (paths under the module tree) of virtio-net for
// qemu user networking, in load order: the base initramfs does not have them.
func VirtioNetModules() []string {
	return []string{
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
		"kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
	}
}

// RunScript is the payload's /payload/run.sh: it loads the modules (names of
// /payload/mod/<name>.ko, in order; one already loaded is skipped), brings up eth0 on
// qemu's user network (the host is 10.0.2.2) and then runs tail (the exports and the
// exec of the test binary).
func RunScript(modules []string, tail string) string {
	return fmt.Sprintf(`for m in %s; do
	[ -e /sys/module/$(echo $m | tr - _) ] || insmod /payload/mod/$m.ko || echo "insmod $m failed"
done
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
/sbin/ip link set eth0 up
/sbin/ip addr add 10.0.2.15/24 dev eth0
/sbin/ip route add default via 10.0.2.2
%s`, strings.Join(modules, " "), tail)
}

// Initramfs packs the tree root as a newc cpio (gzip) and writes base with it
// appended to out: the kernel unpacks both, the payload over the base image.
func Initramfs(root, base, out string) error {
	pack := fmt.Sprintf("cd %q && find . | cpio -o -H newc --quiet | gzip -1 > %q.pay && cat %q %q.pay > %q",
		root, out, base, out, out)
	if b, err := exec.Command("sh", "-c", pack).CombinedOutput(); err != nil {
		return fmt.Errorf("initramfs: %w: %s", err, b)
	}
	return nil
}

var endRE = regexp.MustCompile(`@@KUBAL-VM-END rc=(\d+)@@`)

// Boot runs the guest (qemu, one CPU, user networking with the host at 10.0.2.2) and
// relays the test's console output, the lines between @@KUBAL-VM-BEGIN@@ and
// @@KUBAL-VM-END rc=N@@, to stdout as "guest| ...". It returns N and the lines that
// hold stepMark (from stepMark on: the guest's summary). KUBAL_VM_MEM (MiB, default
// 3072) and KUBAL_VM_ACCEL (default tcg) tune qemu. It fails, with the console
// outside the test, when the VM reports no result.
func Boot(ctx context.Context, kernel, initrd, stepMark string) (int, []string, error) {
	mem := os.Getenv("KUBAL_VM_MEM")
	if mem == "" {
		mem = "3072"
	}
	accel := os.Getenv("KUBAL_VM_ACCEL")
	if accel == "" {
		accel = "tcg" // the paravirtual /dev/kvm of these machines cannot run this kernel
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", accel, "-cpu", "max", "-m", mem, "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none",
		"-netdev", "user,id=n0,net=10.0.2.0/24,host=10.0.2.2",
		"-device", "virtio-net-pci,netdev=n0,romfile=",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return -1, nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return -1, nil, fmt.Errorf("qemu: %w", err)
	}
	rc := -1
	var summary []string
	var boot bytes.Buffer
	on := false
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.Contains(line, "@@KUBAL-VM-BEGIN@@"):
			on = true
			continue
		case endRE.MatchString(line):
			fmt.Sscan(endRE.FindStringSubmatch(line)[1], &rc)
			on = false
			continue
		}
		if !on {
			boot.WriteString(line + "\n")
			continue
		}
		fmt.Println("guest| " + line)
		if i := strings.Index(line, stepMark); i >= 0 {
			summary = append(summary, line[i:])
		}
	}
	_ = cmd.Wait()
	if rc < 0 {
		return rc, summary, fmt.Errorf("the VM reported no result (crash, panic or timeout)\nconsole outside the test:\n%s", boot.String())
	}
	return rc, summary, nil
}

// Missing names the first thing the host side of a VM scenario lacks, or is nil: a
// file of the VM cache, or one of tools on PATH (setup is the script that installs
// them).
func Missing(vmCache, setup string, tools ...string) error {
	for _, f := range []string{"vmlinuz", "base.cpio.gz", "kernel"} {
		if _, err := os.Stat(filepath.Join(vmCache, f)); err != nil {
			return fmt.Errorf("%s missing: run integration/vm/setup.sh", filepath.Join(vmCache, f))
		}
	}
	for _, b := range tools {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s not found: run %s (it runs the setup scripts)", b, setup)
		}
	}
	return nil
}

// Run packs root over the cached base image, boots it (see Boot) and logs the guest's
// summary and the time since start. It fails t when the VM reports no result, or when
// the guest's test failed: then with the tail of hostLogs (the host's servers).
func Run(t testing.TB, ctx context.Context, vmCache, root, stepMark string, start time.Time, hostLogs func() string) {
	t.Helper()
	initrd := filepath.Join(t.TempDir(), "initrd.cpio.gz")
	if err := Initramfs(root, filepath.Join(vmCache, "base.cpio.gz"), initrd); err != nil {
		t.Fatal(err)
	}
	t.Logf("host: rigs up and initramfs built in %s; booting the VM (qemu TCG)", time.Since(start).Round(time.Millisecond))

	rc, summary, err := Boot(ctx, filepath.Join(vmCache, "vmlinuz"), initrd, stepMark)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured (guest):\n%s", strings.Join(summary, "\n"))
	t.Logf("host: total %s", time.Since(start).Round(time.Second))
	if rc != 0 {
		logs := hostLogs()
		if len(logs) > 2000 {
			logs = logs[len(logs)-2000:]
		}
		t.Fatalf("the scenario in the VM failed (rc=%d); see the guest output above\nhost servers (tail):\n%s", rc, logs)
	}
}

// Unavailable skips t loudly because the rig cannot run here, or fails it under
// KUBAL_REQUIRE_RIGS=1; rig and scenario name the rig and what is skipped.
func Unavailable(t testing.TB, rig, scenario, msg string) {
	t.Helper()
	if os.Getenv("KUBAL_REQUIRE_RIGS") == "1" {
		t.Fatalf("KUBAL_REQUIRE_RIGS=1 and the %s rig is unavailable: %s", rig, msg)
	}
	t.Skipf("SKIPPING %s: rig unavailable: %s", scenario, msg)
}
