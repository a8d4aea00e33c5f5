// Package controllers owns the agent's control loop: the controller-runtime
// manager and its watches on Pods, Namespaces and NetworkPolicies (and, while
// their CRD is served, ClusterNetworkPolicies and Nodes, found by polling
// discovery: clusterpolicy.go), the cache transform that trims pods, the
// coalescing of events into syncs of this node, Kubernetes Events about
// policies it cannot fully enforce, the status conditions of
// ClusterNetworkPolicies, and the health and readiness checks (ready after
// the first committed sync).
package controllers
