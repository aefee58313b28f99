// Package conftool keeps Wikimedia-style conftool pooling state in etcd v3.
//
// Each real server's admin state is one key, <prefix>/<dc>/<cluster>/<service>/<host>
// (prefix default /conftool/v1/pools), holding JSON such as {"pooled": "yes", "weight": 10}.
// The package provides:
//   - Source: the etcd:// server-list source (PyBal SPEC §2.3 semantics, over the v3 API);
//   - Overlay: the same keys gating the servers of another source (`conftool = dc/cluster/service`);
//   - Writer: admin pool/depool/weight changes as compare-and-swap transactions, audited.
//
// Every LVS host watches the same keys, so a depool done once is seen by all of them.
package conftool
