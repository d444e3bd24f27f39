"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) built from the release's Go modules (kube/), and a node whose kubelet is the
e2e pod runner: what the `cluster` suite and `make cluster` run. See tests/kube/README.md."""
