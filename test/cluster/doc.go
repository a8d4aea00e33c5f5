// Package cluster starts a Kubernetes cluster on one machine in which
// every part is the real upstream program except the container runtime:
// kube-apiserver and etcd (through envtest), kube-controller-manager,
// kube-scheduler, kube-proxy in every node, the CNI plugins, and the
// nftpol agent installed as users install it (kubectl apply -k
// config/default: a DaemonSet whose pods netnskubelet runs); the kubelets
// are netnskubelet's, whose pods are network namespaces. `make cluster`
// runs one until Ctrl-C; the package's tests run workloads, Services and
// NetworkPolicies through it and check how the agent works with kube-proxy
// (nftables and iptables modes) and the ptp and bridge CNI plugins.
//
// It owns the cluster's layout, which the README ("A real cluster on one
// machine") documents:
//   - a node is a network namespace plugged into one shared link (a bridge
//     in the "<prefix>-lan" namespace), 192.0.2.i/24 and 2001:db8::i/64,
//     routing the other nodes' pod CIDRs (10.244.j.0/24,
//     fd00:10:244:j::/64) to them and the Service ranges to the control
//     plane;
//   - the API server listens on loopback in the root namespace. The
//     "<prefix>-cp" namespace, on the shared link as 192.0.2.254 and
//     2001:db8::fe, relays to it; the API server advertises that address
//     as the `kubernetes` Service's endpoint, with a serving certificate
//     valid for it and the Service's ClusterIPs, so in-cluster clients
//     (the agent with its ServiceAccount token) reach it through
//     kube-proxy as in any cluster. A relay in every node's namespace
//     answers on the loopback address too, so kube-proxy there uses the
//     admin kubeconfig;
//   - the API server reaches each kubelet on a root-namespace loopback
//     port (the Node's InternalDNS address and daemon endpoint) while the
//     Node's InternalIP — what kube-proxy and NetworkPolicy see — stays
//     its address on the shared link.
//
// All its traffic stays inside the namespaces it creates plus loopback;
// it never adds an address or a route to the root namespace. Stop removes
// everything, and a start removes what a crashed run of the same cluster
// left.
//
// build-assets.sh builds the upstream programs from the Go module proxy.
package cluster
