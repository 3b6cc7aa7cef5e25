#!/bin/bash
# Converts the appliance disk to a hypervisor's native format, cached beside the raw disk.
#
#   bash image-build/convert.sh --to qcow2|vmdk|vdi|vhdx [--manifest PATH] [--out FILE]
#
# --manifest defaults to ${BRIDGE_IMAGE_CACHE:-/var/cache/bridge/images}/current/manifest.json; --out
# to appliance.<ext> beside it (reused when newer than the raw disk). qemu-img's progress goes to
# stderr; the last stdout line is the converted file's absolute path.
#   qcow2 (QEMU, compressed)   vmdk (VMware; streamOptimized)   vdi (VirtualBox)   vhdx (Hyper-V)
# Parallels imports the vmdk (or qcow2 on recent versions).
set -euo pipefail
to= manifest=${BRIDGE_IMAGE_CACHE:-/var/cache/bridge/images}/current/manifest.json out=
while [ $# -gt 0 ]; do
  case $1 in
    --to) to=$2; shift 2 ;;
    --manifest) manifest=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "convert.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case $to in
  qcow2) opts=(-O qcow2 -c) ;;
  vmdk) opts=(-O vmdk -o subformat=streamOptimized) ;;
  vdi) opts=(-O vdi) ;;
  vhdx) opts=(-O vhdx -o subformat=dynamic) ;;
  *) echo "convert.sh: --to must be qcow2, vmdk, vdi or vhdx (got '${to}')" >&2; exit 2 ;;
esac
[ -f "$manifest" ] || { echo "convert.sh: no manifest at $manifest (run image-build/build.sh)" >&2; exit 1; }
dir=$(cd "$(dirname "$manifest")" && pwd)
raw=$dir/$(sed -n 's/.*"disk": *"\([^"]*\)".*/\1/p' "$manifest")
out=${out:-$dir/appliance.$to}
if [ -f "$out" ] && [ "$out" -nt "$raw" ]; then
  echo "convert.sh: cached: $out" >&2
else
  qemu-img convert -p -f raw "${opts[@]}" "$raw" "$out.tmp" >&2
  mv "$out.tmp" "$out"
fi
echo "$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
