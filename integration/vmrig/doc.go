// Package vmrig holds the helpers the scenarios that run inside the IPVS VM share
// (integration/e2e, integration/ecmp, integration/peerbench): running code in a named
// network namespace, BIRD's control-socket client, and child processes with a log file.
// It is test support: nothing in kubal imports it.
package vmrig
