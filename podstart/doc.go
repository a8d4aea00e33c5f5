// Package podstart closes the window at pod start: it is the chained CNI
// plugin (`nftpol cni`, installed on the node as nftpol-cni) whose ADD
// returns only once the node's agent has the new pod's addresses in
// force, the wire protocol the plugin and the agent speak over a unix
// socket, and the installer that puts the plugin into the node's CNI bin
// directory and chains it into the node's conflist (and takes it out).
//
// Without it, a pod's traffic flows from the moment its interface is up
// until the agent has seen the pod's addresses in the API (the kubelet
// writes podIPs only after CNI ADD returned) and committed: an isolated
// pod is reachable, and what it sends is not yet judged. With it, the
// kubelet starts no container before the agent answered.
//
// The agent side (the socket server and the address hints it feeds into
// its syncs) lives in controllers; this package owns only what both sides
// must agree on, and the plugin process.
package podstart
