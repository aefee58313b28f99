//go:build tools

// Package tools pins the kube-apiserver and kube-proxy commands into this module's
// graph (one module: both are built from the same pinned k8s.io/kubernetes).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
)
