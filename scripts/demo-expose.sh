#!/usr/bin/env bash
# The foundation demo: a 1 GiB memory block device served as a FUSE file, ext4 made on it,
# loop-mounted, files copied in and read back, then everything stopped. Needs root (mount).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/bridge-demo.XXXXXX)
agent_pid=''
cleanup() {
  mountpoint -q "$work/ext4" && umount "$work/ext4"
  [[ -n "$agent_pid" ]] && kill -TERM "$agent_pid" 2>/dev/null && wait "$agent_pid" || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== bridge-agent expose --device memory:1G $work/mnt"
node dist/appliance/src/cli.js expose --device memory:1G "$work/mnt" &
agent_pid=$!
for _ in $(seq 50); do [[ -e "$work/mnt/disk.img" ]] && break; sleep 0.1; done
ls -l "$work/mnt/disk.img"

echo "== mkfs.ext4 on the FUSE file, loop-mount it"
mkfs.ext4 -q -F "$work/mnt/disk.img"
mkdir -p "$work/ext4"
mount -o loop "$work/mnt/disk.img" "$work/ext4"

echo "== copy files in"
mkdir -p "$work/src"
echo "hello from bridge" > "$work/src/hello.txt"
head -c 64M /dev/urandom > "$work/src/random.bin"
cp -a "$work/src/." "$work/ext4/"
sync
df -h "$work/ext4" | tail -1

echo "== remount and read back"
umount "$work/ext4"
e2fsck -fn "$work/mnt/disk.img" | tail -1
mount -o loop,ro "$work/mnt/disk.img" "$work/ext4"
cat "$work/ext4/hello.txt"
cmp "$work/src/random.bin" "$work/ext4/random.bin" && echo "random.bin: 64 MiB identical"
umount "$work/ext4"

echo "== stop the agent (SIGTERM): it unmounts cleanly"
kill -TERM "$agent_pid"; wait "$agent_pid"; agent_pid=''
grep -q "$work/mnt" /proc/mounts && { echo "mount left behind!"; exit 1; } || echo "no mount left. demo OK"
