#!/usr/bin/env bash
# Builds an operator tool (helm, helm-docs, crane, promtool or cosign) from the Go module pinned in
# tests/tools/<tool>/go.mod into a cache folder keyed by its go.sum, and prints
# the binary's path. Idempotent: a cached binary is reused. Only the Go module
# proxy is used; no binary is downloaded.
#   tests/tools/build.sh helm|helm-docs|crane|promtool|cosign
set -euo pipefail
tool=${1:?usage: build.sh helm|helm-docs|crane|promtool|cosign}
here=$(cd "$(dirname "$0")" && pwd)
case "$tool" in
  helm) pkg=helm.sh/helm/v3/cmd/helm ;;
  helm-docs) pkg=github.com/norwoodj/helm-docs/cmd/helm-docs ;;
  crane) pkg=github.com/google/go-containerregistry/cmd/crane ;;
  promtool) pkg=github.com/prometheus/prometheus/cmd/promtool ;;
  cosign) pkg=github.com/sigstore/cosign/v2/cmd/cosign ;;
  *) echo "build.sh: unknown tool $tool" >&2; exit 2 ;;
esac
command -v go >/dev/null || { echo "build.sh: Go is required to build $tool" >&2; exit 1; }
cd "$here/$tool"
key=$(cat go.mod go.sum "$here/build.sh" | sha256sum | cut -c1-12)
out="${SM_INJECTOR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sm-injector/tools}/$tool-$key"
if [ -x "$out/$tool" ]; then
  echo "$out/$tool"; exit 0
fi
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-trimpath
tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "build.sh: building $tool ($(awk '$1 == "require" && NF == 3 {print $2, $3; exit}' go.mod)) into $out" >&2
start=$(date +%s)
go build -ldflags "-s -w" -o "$tmp/$tool" "$pkg"
rm -rf "$out"; mv "$tmp" "$out"
echo "build.sh: built $tool in $(( $(date +%s) - start ))s" >&2
echo "$out/$tool"
