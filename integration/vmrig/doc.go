// Package vmrig holds the helpers the scenarios that run inside the IPVS VM share
// (integration/e2e, integration/k8sservices, integration/ecmp, integration/peerbench,
// integration/vm): in the guest, running code in a named network namespace, BIRD's
// control-socket client, child processes with a log file, step lines and the host's
// control endpoint; on the host, packing the guest's initramfs (binaries with their
// libraries, kernel modules, the run script) and booting it under qemu with user
// networking. It is test support: nothing in kubal imports it.
package vmrig
