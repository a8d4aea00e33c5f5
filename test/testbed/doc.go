// Package testbed gives end-to-end tests a real cluster on one machine: a
// real kube-apiserver and etcd (envtest, binaries from KUBEBUILDER_ASSETS),
// simulated nodes and pods as network namespaces joined by routed veth
// pairs (Calico style: /32 and /128 pod addresses, link-local gateways),
// TCP and UDP servers in every pod, parallel probes with short timeouts,
// reachability matrices, and agent processes that program a node's
// namespace with --netns.
//
// Everything it creates lives in namespaces it made, named with the
// caller's prefix; Close (registered with t.Cleanup by the test helpers)
// removes every namespace, listener and process, and New removes leftovers
// of crashed runs with the same prefix first. Nothing is added to the root
// namespace but the API server and agent processes on 127.0.0.1.
package testbed
