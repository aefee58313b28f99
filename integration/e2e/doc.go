// Package e2e is kubal's end-to-end scenario (`make test-e2e`, run.sh): the ingress
// set-up as it runs in production, with every component real. A real etcd (conftool)
// and kube-apiserver run on the host; a qemu VM (the Debian cloud kernel of
// integration/vm, for real IPVS) runs kubal as the director, three Kubernetes "nodes"
// as network namespaces (a NodePort-style backend plus a separate gateway health
// endpoint each), a client sending a steady request loop to the VIP, BIRD2 as the
// router and a second, dry-run kubal as the backup LVS. The guest reaches etcd and the
// API server on the host through qemu user networking (10.0.2.2).
//
// The same static test binary plays every part: on the host it starts the servers and
// the VM; in the VM it runs the scenario (KUBAL_E2E_GUEST=1); in the namespaces it is
// the backend or the client loop (KUBAL_E2E_ROLE).
package e2e
