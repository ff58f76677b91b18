#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from the Go modules pinned in
# this folder (go.mod / etcd/go.mod) into a cache folder keyed by the versions and the
# go.sum hashes, and prints that folder. Idempotent: a complete cache is reused as is.
# Only the Go module proxy is used; no binary is downloaded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

command -v go >/dev/null || { echo "build.sh: Go is required to build the test cluster (https://go.dev/dl)" >&2; exit 1; }

K=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' go.mod)
E=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' etcd/go.mod)
[ -n "$K" ] && [ -n "$E" ] || { echo "build.sh: cannot read the pinned versions from go.mod" >&2; exit 1; }
key=$(cat go.sum etcd/go.sum build.sh | sha256sum | cut -c1-12)
out="${SM_INJECTOR_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sm-injector/cluster}/kubernetes-$K-etcd-$E-$key"

if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ] && [ -x "$out/kubelet" ] && [ -x "$out/etcd" ]; then
  echo "$out"; exit 0
fi

export GOWORK=off CGO_ENABLED=0 GOFLAGS=-trimpath
minor=$(echo "$K" | cut -d. -f2)
ver="-X k8s.io/component-base/version.gitVersion=$K -X k8s.io/component-base/version.gitMajor=1"
ver="$ver -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K"
ver="$ver -X k8s.io/component-base/version.gitTreeState=clean"
tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "build.sh: building Kubernetes $K and etcd $E into $out (first time: about 20 minutes)" >&2
start=$(date +%s)
go build -ldflags "-s -w $ver" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
go build -ldflags "-s -w $ver" -o "$tmp/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
go build -ldflags "-s -w $ver" -o "$tmp/kube-scheduler" k8s.io/kubernetes/cmd/kube-scheduler
go build -ldflags "-s -w $ver" -o "$tmp/kubelet" k8s.io/kubernetes/cmd/kubelet
(cd etcd && go build -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
"$tmp/kube-apiserver" --version >&2
"$tmp/etcd" --version | head -1 >&2
rm -rf "$out"; mv "$tmp" "$out"
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
