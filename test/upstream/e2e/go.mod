// The entry point of the upstream NetworkPolicy e2e suite. This go.mod only
// keeps the directory out of the nftpol module: test/upstream/build-e2e.sh
// copies netpol_e2e_test.go into a throwaway module that requires
// k8s.io/kubernetes (test/k8s-module.sh) and compiles it there.
module nftpol.local/netpol-e2e

go 1.26
