#!/usr/bin/env bash
# Builds sm-injector's OCI image without a Docker daemon: a static binary (musl)
# in a minimal image (no shell, no package manager; CA certificates; user 65532),
# assembled with crane (go-containerregistry, built from its Go module by
# tests/tools/build.sh) through a registry crane serves on loopback. Writes an
# OCI image layout and a tarball, and prints the layout's folder.
#   image/build.sh [out-dir]     (default: target/image)
#   ARCH=arm64 image/build.sh    (linux/arm64: cross-built with Debian's
#                                 gcc-aarch64-linux-gnu as C compiler and linker)
# Publishing: `crane push <out-dir>/sm-injector.tar <registry>/sm-injector:<tag>`;
# release/release.sh joins both architectures into one index, signed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/image}
arch=${ARCH:-amd64}
version=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
crane=$(tests/tools/build.sh crane)

case "$arch" in
  amd64)
    target=x86_64-unknown-linux-musl
    command -v musl-gcc >/dev/null || { echo "image/build.sh: musl-gcc is required (apt-get install musl-tools)" >&2; exit 1; }
    export CC_x86_64_unknown_linux_musl=musl-gcc ;;
  arm64)
    target=aarch64-unknown-linux-musl
    # Rust's musl target links its own musl (self-contained); the cross gcc
    # compiles the C dependencies (aws-lc) and drives the link.
    command -v aarch64-linux-gnu-gcc >/dev/null || { echo "image/build.sh: aarch64-linux-gnu-gcc is required (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2; exit 1; }
    # Its C headers come in another package, only recommended by the compiler's.
    echo '#include <sys/types.h>' | aarch64-linux-gnu-gcc -E - >/dev/null 2>&1 || { echo "image/build.sh: aarch64-linux-gnu-gcc finds no C headers for arm64 (apt-get install libc6-dev-arm64-cross)" >&2; exit 1; }
    export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc ;;
  *) echo "image/build.sh: ARCH must be amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
# (grep without -q reads the whole list: under pipefail, -q can fail the check.)
rustup target list --installed 2>/dev/null | grep -x "$target" >/dev/null || rustup target add "$target" >&2
cargo build --locked --release --target "$target" --bin sm-injector >&2
bin="${CARGO_TARGET_DIR:-target}/$target/release/sm-injector"

work=$(mktemp -d)
trap 'kill "${registry_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/etc/ssl/certs" "$root/tmp"
install -m 0755 "$bin" "$root/sm-injector"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
# Reproducible: fixed owners and times, sorted names.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-01-01 00:00:00Z' \
  -C "$root" -cf "$work/layer.tar" .

# crane edits images in a registry: one in memory, on loopback, for this build.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
ref="127.0.0.1:$port/sm-injector:$version"
"$crane" append --oci-empty-base --platform "linux/$arch" -f "$work/layer.tar" -t "$ref.base" >&2
"$crane" mutate "$ref.base" -t "$ref" \
  --set-platform "linux/$arch" \
  --entrypoint /sm-injector --cmd serve --user 65532:65532 --workdir / \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --exposed-ports 8443/tcp,9090/tcp \
  --label org.opencontainers.image.title=sm-injector \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.source=https://github.com/sm-injector/sm-injector >&2
rm -rf "$out"; mkdir -p "$out"
cp "$bin" "$out/sm-injector"
"$crane" pull --format oci "$ref" "$out/oci" >&2
"$crane" pull "$ref" "$out/sm-injector.tar" >&2
"$crane" digest "$ref" > "$out/digest"
echo "image/build.sh: sm-injector:$version linux/$arch $(cat "$out/digest") in $out (OCI layout oci/, tarball sm-injector.tar, the binary)" >&2
echo "$out"
