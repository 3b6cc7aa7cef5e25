#!/bin/bash
# Builds the bridge appliance image (see docs/appliance.md), or reuses it when its inputs did not change.
#
#   bash image-build/build.sh [--out DIR] [--force] [--no-compile]
#
# DIR defaults to ${BRIDGE_IMAGE_CACHE:-/var/cache/bridge/images}. The output goes to DIR/<hash>/, where
# <hash> covers every input: these scripts and files, the package list, the Debian mirror, the kernel
# and boot loader package versions, the node binary, the built agent (dist/), its templates and
# package-lock.json. DIR/current links to the newest build. Progress lines "[n/m] ..." go to stderr;
# the last stdout line is the absolute path of manifest.json. Needs root, debootstrap, mtools, sfdisk,
# cpio, zstd, e2fsprogs and dosfstools on the host.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=${BRIDGE_IMAGE_CACHE:-/var/cache/bridge/images}
force=0 compile=1
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    --force) force=1; shift ;;
    --no-compile) compile=0; shift ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

steps=8 step=0
progress() { step=$((step + 1)); echo "[$step/$steps] $*" >&2; }
die() { echo "build.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
for tool in flock debootstrap mkfs.ext4 mkfs.fat mcopy sfdisk cpio zstd node npm sha256sum apt-get dpkg; do
  command -v "$tool" >/dev/null || die "missing tool on the host: $tool"
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- inputs --------------------------------------------------------------------------------------
progress "checking inputs"
if [ "$compile" = 1 ]; then (cd "$repo" && npx tsc -b appliance >&2) || die "the agent does not compile (npx tsc -b appliance)"; fi
[ -f "$repo/dist/appliance/src/cli.js" ] || die "no built agent in $repo/dist (run npx tsc -b)"

# The mirror the host's apt uses (deb822 or one-line format); BRIDGE_DEBIAN_MIRROR overrides it.
mirror=${BRIDGE_DEBIAN_MIRROR:-$(
  { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } | grep -v security | head -n 1 || true
)}
mirror=${mirror:-http://deb.debian.org/debian}
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ && !k {k = $2} END {print k}')
[ -n "$kernel_pkg" ] || die "apt does not know linux-image-cloud-amd64 (run apt-get update)"
kernel_ver=$(apt-cache policy "$kernel_pkg" | awk '/Candidate:/ {print $2}')
syslinux_ver=$(apt-cache policy syslinux | awk '/Candidate:/ {print $2}')
[ -n "$kernel_ver" ] && [ -n "$syslinux_ver" ] || die "apt has no candidate for $kernel_pkg or syslinux"
node_bin=$(readlink -f "$(command -v node)")

hash_files() { (cd "$1" && find . -type f ! -name '*.map' ! -name '*.tsbuildinfo' ! -name '*.test.js' ! -name '*.test.d.ts' -print0 | sort -z | xargs -0 sha256sum); }
base_hash=$(cat "$here/packages.txt" "$here/lib/base.sh" <(echo "$mirror") | sha256sum | cut -c1-16)
hash=$(
  {
    echo "base $base_hash kernel $kernel_pkg $kernel_ver syslinux $syslinux_ver"
    hash_files "$here"
    hash_files "$repo/dist/appliance"
    hash_files "$repo/dist/shared"
    [ -d "$repo/appliance/templates" ] && hash_files "$repo/appliance/templates"
    sha256sum "$repo/package.json" "$repo/package-lock.json" "$node_bin"
  } | sha256sum | cut -c1-32
)
bridge_version=$(sed -n "s/^export const VERSION = '\(.*\)';/\1/p" "$repo/shared/src/version.ts")
[ -n "$bridge_version" ] || die "cannot read VERSION from shared/src/version.ts"
image_version="$bridge_version+${hash:0:12}"
dest=$out/$hash

# One build at a time per cache directory (tests and engineers share it); a waiting build then
# usually finds its image cached.
exec 9>"$out/.lock"
flock 9

if [ "$force" = 0 ] && [ -f "$dest/manifest.json" ]; then
  echo "[$steps/$steps] cached: $dest (image $image_version)" >&2
  ln -sfn "$hash" "$out/current"
  echo "$dest/manifest.json"
  exit 0
fi

work=$(mktemp -d "$out/.build-XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# --- base root (debootstrap + packages), cached by the package list --------------------------------
base=$out/.base/$base_hash
if [ -f "$base/done" ]; then
  progress "base root: cached ($base_hash)"
else
  progress "base root: debootstrap bookworm + $(grep -cv '^\s*\(#\|$\)' "$here/packages.txt") packages from $mirror"
  bash "$here/lib/base.sh" "$here/packages.txt" "$mirror" "$base"
fi

# --- kernel and boot loader packages, cached by version --------------------------------------------
pkgs=$out/.base/pkgs-$kernel_ver-$syslinux_ver
if [ -f "$pkgs/done" ]; then
  progress "kernel $kernel_pkg $kernel_ver: cached"
else
  progress "kernel $kernel_pkg $kernel_ver, syslinux $syslinux_ver: downloading"
  rm -rf "$pkgs" && mkdir -p "$pkgs/x"
  (cd "$pkgs" && apt-get download -q "$kernel_pkg=$kernel_ver" syslinux syslinux-common >"$pkgs/download.log" 2>&1) ||
    { tail -5 "$pkgs/download.log" >&2; die "apt-get download failed"; }
  for deb in "$pkgs"/*.deb; do dpkg -x "$deb" "$pkgs/x"; done
  touch "$pkgs/done"
fi
kver=$(ls "$pkgs/x/lib/modules")

# --- root filesystem -------------------------------------------------------------------------------
progress "assembling the root: agent, node $(node --version), kernel modules"
root=$work/root
cp -a "$base/root" "$root"
# Kernel modules, minus hardware an appliance never sees; depmod runs with the image's own kmod.
mkdir -p "$root/lib/modules"
cp -a "$pkgs/x/lib/modules/$kver" "$root/lib/modules/"
rm -rf "$root/lib/modules/$kver/kernel/drivers/"{gpu,media,infiniband,net/wireless,net/ethernet/mellanox,sound,usb/gadget}
chroot "$root" /sbin/depmod -a "$kver"
# Node (the host's binary runs unchanged in a bookworm root) and the agent with production dependencies.
install -m 755 "$node_bin" "$root/usr/local/bin/node"
app=$root/opt/bridge
mkdir -p "$app/dist" "$app/node_modules"
cp "$repo/package.json" "$app/"
(cd "$repo/dist" && find appliance shared -name '*.js' ! -name '*.test.js' -print0 | cpio -0 -pdm --quiet "$app/dist")
[ -d "$repo/appliance/templates" ] && mkdir -p "$app/appliance" && cp -a "$repo/appliance/templates" "$app/appliance/"
(cd "$repo" && npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$repo/||" | grep '^node_modules/' | awk -F/node_modules/ 'NF == 1') |
  while read -r dir; do mkdir -p "$app/$(dirname "$dir")" && cp -a "$repo/$dir" "$app/$(dirname "$dir")/"; done
[ -d "$app/node_modules/commander" ] || die "production node_modules were not copied (npm ls --omit=dev failed?)"
# Only linux-x64 prebuilt addons, no sources maps, type declarations or docs.
find "$app/node_modules" \( -name '*.map' -o -name '*.d.ts' -o -name '*.md' -o -name '*.markdown' -o -name dist-types \) -prune -exec rm -rf {} +
find "$app/node_modules" -path '*/prebuilds/*' -type d \( -name 'darwin*' -o -name 'win32*' -o -name 'android*' -o -name 'linux-arm*' -o -name 'linux-ia32' \) -prune -exec rm -rf {} +
# Our files: init, sshd policy, udhcpc and acpid hooks, the bridge-agent command; the version stamp.
cp -a "$here/rootfs/." "$root/"
chmod 755 "$root/usr/sbin/bridge-init" "$root/usr/local/bin/bridge-agent" "$root/usr/share/bridge/udhcpc.script" "$root/usr/share/bridge/acpi/PWRF/00000080"
echo "$image_version" >"$root/etc/bridge-image-version"
echo bridge >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
: >"$root/etc/fstab"
mkdir -p "$root/root/.ssh" && chmod 700 "$root/root/.ssh"

# --- initramfs -------------------------------------------------------------------------------------
progress "initramfs: busybox + virtio, disk and overlay modules"
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,etc,lib/modules}
cp "$root/bin/busybox" "$ird/bin/busybox"
for applet in sh mount umount insmod findfs sleep mkdir ls tr cat switch_root; do ln -s busybox "$ird/bin/$applet"; done
install -m 755 "$here/initramfs/init" "$ird/init"
# Modules in dependency order (modules.dep lists a module's dependencies; load those first).
module_order() {
  local dep=$root/lib/modules/$kver/modules.dep
  awk -v want="$*" '
    function visit(m,   i, n, d) {
      if (m in seen) return; seen[m] = 1
      if (!(m in path)) { missing = missing " " m; return }
      n = split(deps[m], d, " "); for (i = n; i >= 1; i--) visit(name[d[i]])
      print path[m]
    }
    { p = $1; sub(/:$/, "", p); b = p; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); gsub(/-/, "_", b)
      path[b] = p; name[p] = b; deps[b] = ""; for (i = 2; i <= NF; i++) deps[b] = deps[b] " " $i }
    END { n = split(want, w, " "); for (i = 1; i <= n; i++) visit(w[i]); if (missing != "") print "MISSING" missing > "/dev/stderr" }
  ' "$dep"
}
copy_modules() { # LISTFILE MODULE...
  local list=$1; shift
  module_order "$@" | while read -r p; do cp "$root/lib/modules/$kver/$p" "$ird/lib/modules/"; basename "$p"; done >"$list"
}
copy_modules "$ird/etc/modules.virtio" virtio_pci virtio_net virtio_blk virtio_scsi sd_mod
copy_modules "$ird/etc/modules.other" ata_piix ata_generic sd_mod sr_mod hv_storvsc hv_netvsc vmw_pvscsi vmxnet3
module_order overlay | while read -r p; do cp "$root/lib/modules/$kver/$p" "$ird/lib/modules/overlay.ko"; done
(cd "$ird" && find . -print0 | sort -z | cpio -0 -o -H newc --quiet --reproducible 2>/dev/null || find . -print0 | sort -z | cpio -0 -o -H newc --quiet) |
  zstd -q -19 -T0 >"$work/initrd.img"
cp "$pkgs/x/boot/vmlinuz-$kver" "$work/vmlinuz"

# --- root ext4 and the bootable disk ----------------------------------------------------------------
# Disk: MBR (syslinux mbr.bin) | p1 FAT16 boot (syslinux, kernel, initrd), bootable | p2 ext4 root,
# labelled bridge-root. Both filesystems are written straight into the disk file at their offsets.
progress "root filesystem: ext4 (read-only, no journal)"
cmdline="root=LABEL=bridge-root console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off"
root_mib=$(($(du -sm --apparent-size "$root" | cut -f1) * 115 / 100 + 64))
boot_mib=32
disk=$work/appliance.raw
truncate -s $((1 + boot_mib + root_mib))M "$disk"
sfdisk -q "$disk" <<EOF
label: dos
start=1MiB, size=${boot_mib}MiB, type=6, bootable
start=$((1 + boot_mib))MiB, size=${root_mib}MiB, type=83
EOF
mkfs.ext4 -q -F -L bridge-root -O ^has_journal -m 0 -N $(($(find "$root" | wc -l) + 20000)) -d "$root" -E offset=$(((1 + boot_mib) * 1048576)),root_owner=0:0 \
  "$disk" "${root_mib}M" || die "mkfs.ext4 -d failed"

progress "bootable disk: MBR + syslinux"
boot=$work/boot.fat
mkfs.fat -F 16 -n BRIDGEBOOT -C "$boot" $((boot_mib * 1024)) >/dev/null
cat >"$work/syslinux.cfg" <<EOF
DEFAULT bridge
PROMPT 0
TIMEOUT 0
LABEL bridge
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline console=tty0 console=ttyS0
EOF
mcopy -i "$boot" "$work/vmlinuz" "$work/initrd.img" ::/
mmd -i "$boot" ::/syslinux
mcopy -i "$boot" "$work/syslinux.cfg" ::/syslinux/
"$pkgs/x/usr/bin/syslinux" --install --directory /syslinux "$boot" || die "syslinux --install failed"
dd if="$boot" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$pkgs/x/usr/lib/syslinux/mbr/mbr.bin" of="$disk" bs=440 count=1 conv=notrunc status=none
rm -f "$boot"

# --- manifest --------------------------------------------------------------------------------------
progress "manifest and compressed size"
compressed=$(zstd -q -3 -T0 -c "$disk" | wc -c)
size_of() { stat -c %s "$1"; }
cat >"$work/manifest.json" <<EOF
{
  "version": "$image_version",
  "hash": "$hash",
  "kernelVersion": "$kver",
  "kernel": "vmlinuz",
  "initrd": "initrd.img",
  "disk": "appliance.raw",
  "diskFormat": "raw",
  "rootPartition": 2,
  "rootLabel": "bridge-root",
  "cmdline": "$cmdline",
  "features": ["template", "power-button"],
  "sizes": { "kernel": $(size_of "$work/vmlinuz"), "initrd": $(size_of "$work/initrd.img"), "disk": $(size_of "$disk"), "diskAllocated": $(($(du -k "$disk" | cut -f1) * 1024)) },
  "compressedSize": $compressed,
  "compression": "zstd -3 of appliance.raw",
  "guest": { "sshUser": "root", "sshPort": 22, "smbPort": 445, "nfsPort": 2049, "iscsiPort": 3260 },
  "built": "$(date -u +%FT%TZ)"
}
EOF
rm -rf "$root" "$ird" "$work/syslinux.cfg"
rm -rf "$dest"
mv "$work" "$dest"
chmod 755 "$dest"
trap - EXIT
ln -sfn "$hash" "$out/current"
# Keep the three newest builds (a running VM keeps reading an older one even after it is deleted).
ls -dt "$out"/*/ | grep -E '/[0-9a-f]{32}/$' | tail -n +4 | xargs -r rm -rf
echo "image $image_version: $dest (disk $(($(size_of "$dest/appliance.raw") >> 20)) MiB, compressed $((compressed >> 20)) MiB)" >&2
echo "$dest/manifest.json"
