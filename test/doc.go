// Package test holds the end-to-end suites: the NetworkPolicy conformance
// cases on the upstream x/y/z × a/b/c model, run against real agent
// processes, a real kube-apiserver and real packets between network
// namespaces. The testbed they stand on is test/testbed.
package test
