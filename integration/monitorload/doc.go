// Package monitorload is the monitor load harness: 10,000 IdleConnection monitors
// plus 2,000 ProxyFetch checks per second against backends in a child process, in a
// private network namespace. It measures CPU, memory per monitor, RST-to-down
// latency and 503-to-down latency. It only runs when KUBAL_MONITOR_LOAD=1; see
// docs/perf/monitor.md for the command and the numbers.
package monitorload
