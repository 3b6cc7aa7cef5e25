#!/bin/bash
# Builds the appliance's base root directory: debootstrap minbase + the packages in packages.txt,
# trimmed of docs, locales and apt state. Usage: base.sh PACKAGES_TXT MIRROR OUT_DIR
# OUT_DIR/root is the result. Runs as root (debootstrap + chroot). No daemon is started in the chroot.
set -euo pipefail
packages_txt=$1 mirror=$2 out=$3
root=$out/root

rm -rf "$root"
mkdir -p "$out"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$out/debootstrap.log" 2>&1 ||
  { tail -20 "$out/debootstrap.log" >&2; exit 1; }

# Never start services while installing, and keep dpkg from writing docs we would delete anyway.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/bridge-nodoc" <<'CFG'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/bash-completion/*
CFG
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" >"$root/etc/apt/sources.list"

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^\s*$/d' "$packages_txt")
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
chroot "$root" apt-get update -qq >"$out/apt.log" 2>&1 || { tail -20 "$out/apt.log" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$out/apt.log" 2>&1 ||
  { tail -30 "$out/apt.log" >&2; exit 1; }
chroot "$root" apt-get clean
umount "$root/proc"
trap - EXIT

# Trim what an appliance never reads. smbd, ganesha and tgtd are C programs: samba's python bindings
# (samba-tool) and perl's modules (tgt-admin) are not used; the agent manages users with smbpasswd
# and targets with tgtadm. perl-base (dpkg's) stays.
rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,bash-completion,zoneinfo-icu,perl} \
  "$root"/usr/lib/python3* "$root"/usr/bin/python3* "$root"/usr/lib/x86_64-linux-gnu/perl \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/var/log/*
find "$root" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} +
# Host keys are generated at each boot (see bridge-init); never ship the ones made at install time.
rm -f "$root"/etc/ssh/ssh_host_*
echo "$(date -u +%FT%TZ) $(wc -l <"$packages_txt") lines" >"$out/done"
