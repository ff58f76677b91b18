#!/usr/bin/env bash
# Stops what the test node left behind in <node-dir>, after its kubelet has
# stopped: the containers (through containerd while it runs, then any
# containerd-shim of that containerd), the mounts under the folder (pod
# volumes, rootfs overlays, network namespaces) and the pod network's bridge.
# Idempotent; safe on a folder whose processes are already gone.
#   tests/node/stop.sh <node-dir>
set -uo pipefail
[ -n "${SM_INJECTOR_STOP_TRACE:-}" ] && set -x
dir=${1:?usage: stop.sh <node-dir>}
sock="$dir/containerd/containerd.sock"
if [ -S "$sock" ]; then
  for id in $(timeout 10 ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    timeout 5 ctr -a "$sock" -n k8s.io tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1
  done
fi
# The shims outlive containerd (they are daemons); each names its containerd's
# socket on its command line. Killing a shim's container first, then the shim.
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
  case "$cmd" in
    *containerd-shim*"$sock"*)
      pid=${p#/proc/}
      for child in $(cat "/proc/$pid/task/"*/children 2>/dev/null); do kill -KILL "$child" 2>/dev/null; done
      kill -KILL "$pid" 2>/dev/null ;;
  esac
done
sleep 0.2
# Deepest first, detached so that busy mounts go too.
awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
  umount -l "$m" 2>/dev/null
done
if [ -f "$dir/bridge" ]; then
  ip link delete "$(cat "$dir/bridge")" 2>/dev/null
fi
exit 0
