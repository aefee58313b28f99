//go:build tools

// Package kubal pins, through blank imports, the libraries later packages use, so
// go.mod and go.sum hold exact versions before the first import lands.
package kubal

import (
	_ "github.com/moby/ipvs"
	_ "github.com/osrg/gobgp/v4/pkg/server"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/vishvananda/netlink"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "k8s.io/client-go/kubernetes"
)
