// Package controllers owns the agent's control loop: the controller-runtime
// manager and its watches on Pods, Namespaces and NetworkPolicies (and, while
// their CRD is served, ClusterNetworkPolicies and Nodes, found by polling
// discovery: clusterpolicy.go), the cache transform that trims pods, the
// coalescing of events into syncs of this node, Kubernetes Events about
// policies it cannot fully enforce, the status conditions of
// ClusterNetworkPolicies, the CNI plugin's socket and the pod CIDRs of the
// guard of pod addresses (podstart.go, podstart_guard.go), and the health
// and readiness checks (ready after the first committed sync).
package controllers
