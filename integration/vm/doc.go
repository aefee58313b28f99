// Package vm holds kubal's real-kernel IPVS tests. The host kernel of the development
// and CI machines has no IPVS, so these tests run inside a Debian cloud kernel under
// qemu: `make test-vm` (integration/vm/run-tests.sh) builds each test binary static and
// runs it through the `go test -exec` wrapper integration/vm/vmexec. On the host they
// skip with a message saying so.
package vm
