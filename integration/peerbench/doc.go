// Package peerbench runs kubal and Debian's keepalived one after the other in the IPVS
// VM rig, against the same real servers and with equivalent configurations generated
// from one description, and reports each measure as a kubal/keepalived ratio with both
// absolute figures (docs/perf/peers.md). The tests run inside the VM through run.sh
// (`make peerbench`, `make peerbench-smoke`); on the host only the configuration
// generator is tested, and the benchmark skips loudly.
package peerbench
