// Package ecmp is the active-active rig of issue 18 (`make test-ecmp`, run.sh): several
// kubal directors, each in its own network namespace with its own IPVS, announce the
// same VIP over BGP with BFD to a BIRD2 router that spreads the clients' flows over
// them by ECMP with layer-4 hashing. Clients hold long-lived TCP connections through
// the VIP while directors are killed, restarted and added, and backends added and
// removed; the scenario counts broken connections, the longest stall and which flows
// changed backend, with `mh` and with `wrr` as the control. It runs in the IPVS VM
// (integration/vm): the test binary, a static kubal and BIRD are packed into an
// initramfs layer by run.sh and booted through integration/vm/vmexec.
package ecmp
