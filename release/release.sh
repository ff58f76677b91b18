#!/usr/bin/env bash
# A release of sm-injector, published to an OCI registry and signed:
#  - static binaries for linux/amd64 and linux/arm64 (musl), and a CLI
#    archive of each (`sm-injector`, and `kubectl-sm_injector` for
#    `kubectl sm-injector status`), with SHA256SUMS;
#  - one image per architecture (image/build.sh) joined into a multi-arch
#    index, <registry>/sm-injector:<version>;
#  - a CycloneDX SBOM from the Cargo graph (release/sbom.py), attested on the
#    index;
#  - the chart, packaged and pushed as an OCI artifact,
#    oci://<registry>/charts/sm-injector:<version>;
#  - the index (and each platform's image, --recursive) and the chart signed
#    with cosign, then verified before this script says it is done.
# Tools come from their Go modules (tests/tools/build.sh: crane, helm,
# cosign); nothing is downloaded as a binary.
#   COSIGN_KEY=cosign.key COSIGN_PASSWORD=... release/release.sh <registry> [out-dir]
# <registry> is a host[:port][/path] prefix, e.g. ghcr.io/sm-injector or
# 127.0.0.1:5000 (loopback and localhost are spoken to over plain HTTP).
# Prints the index's digest reference.
set -euo pipefail
cd "$(dirname "$0")/.."
registry=${1:?usage: release/release.sh <registry> [out-dir]}
out=${2:-${CARGO_TARGET_DIR:-target}/release-artifacts}
: "${COSIGN_KEY:?COSIGN_KEY: the cosign private key to sign with}"
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
crane=$(tests/tools/build.sh crane)
helm=$(tests/tools/build.sh helm)
cosign=$(tests/tools/build.sh cosign)
insecure=()
helm_http=()
case "$registry" in
  127.0.0.1*|localhost*) insecure=(--allow-http-registry --allow-insecure-registry); helm_http=(--plain-http) ;;
esac
image="$registry/sm-injector"
rm -rf "$out"; mkdir -p "$out"

# Binaries and images, per architecture.
refs=()
for arch in amd64 arm64; do
  ARCH=$arch image/build.sh "$out/image-$arch" >/dev/null
  # crane prints what it pushed, by digest (the registry's manifest form).
  refs+=(-m "$("$crane" push "$out/image-$arch/sm-injector.tar" "$image:$version-$arch")")
  dir="$out/sm-injector-$version-linux-$arch"
  mkdir -p "$dir"
  cp "$out/image-$arch/sm-injector" "$dir/sm-injector"
  ln -sf sm-injector "$dir/kubectl-sm_injector"
  cp LICENSE* README.md "$dir/" 2>/dev/null || true
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-01-01 00:00:00Z' \
    -C "$out" -czf "$dir.tar.gz" "$(basename "$dir")"
  rm -rf "$dir"
done
(cd "$out" && sha256sum ./*.tar.gz > SHA256SUMS)
"$crane" index append "${refs[@]}" -t "$image:$version" >&2
digest=$("$crane" digest "$image:$version")
ref="$image@$digest"

# The SBOM (the crates of the amd64 build; arm64's graph is the same crates).
python3 release/sbom.py x86_64-unknown-linux-musl "$version" > "$out/sbom.cdx.json"

# Signatures and the SBOM attestation, kept in the registry beside the image;
# no transparency log here (a private registry, an offline machine): verify
# with the public key.
export COSIGN_YES=true
"$cosign" sign --key "$COSIGN_KEY" --tlog-upload=false --recursive "${insecure[@]}" "$ref" >&2
"$cosign" attest --key "$COSIGN_KEY" --tlog-upload=false --type cyclonedx \
  --predicate "$out/sbom.cdx.json" "${insecure[@]}" "$ref" >&2

# The chart, as an OCI artifact, signed too.
"$helm" package charts/sm-injector --version "$version" --app-version "$version" -d "$out" >&2
"$helm" push "$out/sm-injector-$version.tgz" "oci://$registry/charts" "${helm_http[@]}" >&2
chart_digest=$("$crane" digest "$registry/charts/sm-injector:$version")
"$cosign" sign --key "$COSIGN_KEY" --tlog-upload=false "${insecure[@]}" \
  "$registry/charts/sm-injector@$chart_digest" >&2

# Verified as a user would, before saying it is done.
pub="$out/cosign.pub"
"$cosign" public-key --key "$COSIGN_KEY" > "$pub"
for what in "$ref" "$registry/charts/sm-injector@$chart_digest"; do
  "$cosign" verify --key "$pub" --insecure-ignore-tlog "${insecure[@]}" "$what" >/dev/null
done
"$cosign" verify-attestation --key "$pub" --insecure-ignore-tlog --type cyclonedx "${insecure[@]}" "$ref" >/dev/null
printf '{"version":"%s","image":"%s","chart":"oci://%s/charts/sm-injector","chartDigest":"%s"}\n' \
  "$version" "$ref" "$registry" "$chart_digest" > "$out/release.json"
echo "release/release.sh: $ref, chart oci://$registry/charts/sm-injector:$version ($chart_digest), artifacts in $out" >&2
echo "$ref"
