// Package k8sservices is the scenario of Kubernetes-declared LVS services with every
// component real (`make test-k8s-services`, README.md): kube-apiserver on the host; in
// the IPVS VM kubal with a [k8s-services] template, BIRD2, a client, and three node
// network namespaces each running a real kube-proxy (nftables mode) in front of
// "pods" (processes in their own namespaces). Traffic goes client -> VIP -> kubal's
// IPVS-DR -> node -> kube-proxy's load-balancer rules -> pod, with no VIP on the nodes.
package k8sservices
