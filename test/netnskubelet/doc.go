// Package netnskubelet is a kubelet whose pods are Linux network
// namespaces instead of containers. It is the one non-upstream part of the
// local cluster (test/cluster): everything around it — kube-apiserver,
// kube-controller-manager, kube-scheduler, kube-proxy, the CNI plugins —
// is the real upstream program, and they see it as a kubelet.
//
// It owns, for one node:
//   - the Node object: registration (addresses, capacity, conditions,
//     daemon endpoint) and the heartbeat (a Lease in kube-node-lease plus
//     periodic status);
//   - the pods bound to the node: a network namespace per pod set up and
//     torn down by CNI plugins through libcni (ptp, or bridge, and what a
//     DaemonSet chains into the node's conflist, read again at every ADD
//     and DEL; the node's /etc/cni, /opt/cni and /run are its own, see
//     noderoot.go), each
//     container's command started inside it (sandbox.go: its own UTS
//     namespace named after the pod, and a mount namespace with its
//     volumes bound in — the projected ServiceAccount token, configMap,
//     secret, downwardAPI, emptyDir, hostPath — a read-only root if asked,
//     the capability bounding set and no_new_privs of its
//     securityContext), restarts, readiness and liveness probes, and the
//     pod status written through the status subresource; deletion stops
//     the processes, runs CNI DEL, removes the namespace and deletes the
//     pod object;
//   - the kubelet endpoint the API server calls: /exec (kubectl exec, with
//     or without a TTY, client-go remotecommand) and /portForward, both
//     through k8s.io/cri-streaming, and /containerLogs.
//
// Images are never pulled: an image table (images.go) maps an image
// reference to binaries built from source. A container therefore shares
// the host's filesystem (but for its volume mounts), users and process
// table; its network, hostname, mounts and capabilities are its own.
// That is enough for what the cluster tests — packet paths, Services,
// NetworkPolicy, and the agent installed from its manifests — without a
// container runtime.
package netnskubelet
