#!/usr/bin/env bash
# Builds the control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and
# etcd named in RELEASE-FOLDER/go.mod into a folder outside the repository keyed by the release and go.sum, once
# per machine; prints that folder. KUBE_BIN_CACHE overrides ~/.cache/cache-injector/kube.
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
here="$(dirname "$script")/${1:?usage: build.sh RELEASE-FOLDER (v1.37, v1.34)}"
cd "$here"
kube="$(GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd="$(GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
key="$(cat "$here/go.mod" "$here/go.sum" "$script" | sha256sum | cut -c1-12)"
out="${KUBE_BIN_CACHE:-$HOME/.cache/cache-injector/kube}/$kube-$key"
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi
minor="${kube#v1.}"; minor="${minor%%.*}"
# What the binaries report as their version (`kubectl version`, /version, the webhook's
# AdmissionReview): release builds set these from git; a module build must set them itself.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags="$ldflags -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
start=$(date +%s)
echo "building Kubernetes $kube and etcd $etcd into $out (once per machine; a cold build takes minutes)" >&2
GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
echo "built in $(( $(date +%s) - start )) s" >&2
touch "$tmp/.complete"
rm -rf "$out"; mv "$tmp" "$out"
echo "$out"
