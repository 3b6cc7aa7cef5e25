#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) for bridge: Debian packages, npm packages, build.
# Idempotent and quick when everything is already there. Used by .ci/run and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

# Debian packages the build, the tests and the image build need (see docs/development.md).
PACKAGES=(
  libfuse2 fuse                                   # fuse-native's library and fusermount
  samba samba-vfs-modules smbclient               # SMB export (+ fruit, streams_xattr) + client
  nfs-ganesha nfs-ganesha-vfs libnfs-utils        # NFS export + client
  tgt libiscsi-bin                                # iSCSI target + clients (iscsi-test-cu)
  qemu-system-x86 qemu-utils qemu-block-extra     # appliance VM, qemu-img (iscsi:// too)
  dosfstools mtools fdisk                         # FAT32 checks (fsck.fat, mtools, sfdisk)
  e2fsprogs xfsprogs btrfs-progs                  # filesystems on sources
  s3backer nbdkit libnbd-bin                      # benchmark peers; NBD clients (nbdinfo, nbdcopy)
  python3-libnbd                                  # nbdsh, for the NBD server tests
  debootstrap busybox-static cpio zstd            # image build
  openssh-client
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "ci: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages: reinstall only when the lockfile changed since the last install.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f node_modules/.bridge-lock-hash || "$(cat node_modules/.bridge-lock-hash)" != "$lock_hash" ]]; then
  # `npm install`, not `npm ci`: npm here writes locks without the other platforms' optional packages
  # (rollup's), and `npm ci` then refuses the lock as out of sync. With the lock present, `npm install`
  # installs exactly the locked versions and leaves the lock as it is.
  npm install --no-audit --no-fund
  echo "$lock_hash" > node_modules/.bridge-lock-hash
fi

npm run build

# `npx bridge` must find our CLI before iproute2's /usr/sbin/bridge: npm does not link a package's
# own bins, so link them where npx looks first.
mkdir -p node_modules/.bin
ln -sf ../../dist/wrapper/src/cli.js node_modules/.bin/bridge
ln -sf ../../appliance/bin/bridge-agent.cjs node_modules/.bin/bridge-agent
