#!/usr/bin/env bash
# Assembles the test node's two images without a registry or a Docker daemon,
# and prints the folder that holds them as tarballs for `ctr images import`:
#   pause.tar    sm-injector.test/pause:1    the pod sandbox (tests/node/pause.c,
#                                            static, built with musl-gcc)
#   busybox.tar  sm-injector.test/busybox:1  Debian's busybox-static, every
#                                            applet linked in /bin
# crane (built from its Go module by tests/tools/build.sh) edits the images in a
# registry it serves on loopback for the build, as image/build.sh does.
# Cached by the inputs' hash; a complete folder is reused as is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox
command -v musl-gcc >/dev/null || { echo "images.sh: musl-gcc is required (apt-get install musl-tools)" >&2; exit 1; }
# grep reads the whole list: with -q it may exit at the match while busybox
# still writes, and under pipefail busybox's SIGPIPE fails the check.
[ -x "$busybox" ] && "$busybox" --list | grep -x sha256sum >/dev/null ||
  { echo "images.sh: busybox-static is required (apt-get install busybox-static)" >&2; exit 1; }
key=$( (cat "$here/pause.c" "$here/images.sh"; sha256sum "$busybox") | sha256sum | cut -c1-12)
out="${SM_INJECTOR_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sm-injector/images}/node-$key"
if [ -s "$out/pause.tar" ] && [ -s "$out/busybox.tar" ]; then
  echo "$out"; exit 0
fi
crane=$("$here/../tools/build.sh" crane)

work=$(mktemp -d)
trap 'kill "${registry_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
layer() { # root-folder -> reproducible layer tarball
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-01-01 00:00:00Z' -C "$1" -cf "$2" .
}
mkdir -p "$work/pause" "$work/busybox/bin" "$work/busybox/tmp" "$work/busybox/etc"
musl-gcc -static -Os -s -o "$work/pause/pause" "$here/pause.c"
install -m 0755 "$busybox" "$work/busybox/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$work/busybox/bin/$applet"
done
chmod 1777 "$work/busybox/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$work/busybox/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$work/busybox/etc/group"
layer "$work/pause" "$work/pause.layer.tar"
layer "$work/busybox" "$work/busybox.layer.tar"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
image() { # name layer entrypoint -> $work/<name>.tar tagged sm-injector.test/<name>:1
  local ref="127.0.0.1:$port/$1:1"
  "$crane" append --oci-empty-base --platform linux/amd64 -f "$2" -t "$ref.base" >&2
  "$crane" mutate "$ref.base" -t "$ref" --set-platform linux/amd64 --entrypoint "$3" \
    --env PATH=/bin >&2
  # A docker-archive tarball whose tag is the name the pods use.
  mkdir -p "$work/$1.img"
  "$crane" pull "$ref" "$work/$1.pulled.tar" >&2
  tar -C "$work/$1.img" -xf "$work/$1.pulled.tar"
  sed -i "s|127.0.0.1:$port/$1:1|sm-injector.test/$1:1|g" "$work/$1.img/manifest.json"
  tar -C "$work/$1.img" -cf "$work/$1.tar" .
}
image pause "$work/pause.layer.tar" /pause
image busybox "$work/busybox.layer.tar" /bin/sh
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
cp "$work/pause.tar" "$work/busybox.tar" "$tmp/"
rm -rf "$out"; mv "$tmp" "$out"
echo "images.sh: sm-injector.test/pause:1 and sm-injector.test/busybox:1 in $out" >&2
echo "$out"
