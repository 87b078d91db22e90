#!/usr/bin/env bash
# Build Ember's ext4 root filesystem image with busybox-static.
#
#   resources/rootfs/build.sh [SIZE_MIB]      (default 64; or EMBER_ROOTFS_SIZE_MIB)
#
# Contents: /bin/busybox with a symlink per applet (`busybox --install -s`
# done on the host), /sbin/init = the compiled resources/initramfs/init.c (/init links to
# it), empty /dev /proc /sys /tmp /run /root /mnt, a minimal /etc. Made with
# `mkfs.ext4 -d` (no loop mount, no root needed; run as root so that files
# are owned by root in the image).
#
# Cached in ~/.cache/ember/rootfs-<key>.ext4, <key> = first 16 hex digits of
# sha256 over the init binary, this script, the busybox-static and e2fsprogs
# versions and the size. Progress goes to stderr; the last stdout line is the
# image path. The cached image is shared: callers copy it before writing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${EMBER_CACHE_DIR:-$HOME/.cache/ember}"
SIZE_MIB="${1:-${EMBER_ROOTFS_SIZE_MIB:-64}}"

LOG_TAG=rootfs
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

[[ $SIZE_MIB =~ ^[0-9]+$ && $SIZE_MIB -ge 8 ]] || die "bad size '$SIZE_MIB' (MiB, >= 8)"

ensure_packages busybox-static e2fsprogs
INIT="$(build_init)"
MKFS="$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)"
[[ -x $MKFS ]] || die "mkfs.ext4 not found"

BUSYBOX="$(dpkg-query -L busybox-static | grep -E '/s?bin/busybox$' | head -n1)"
[[ -x $BUSYBOX ]] || die "busybox-static binary not found"
BB_VERSION="$(dpkg-query -W -f='${Version}' busybox-static)"
E2_VERSION="$(dpkg-query -W -f='${Version}' e2fsprogs)"

KEY="$(
    {
        printf 'busybox-static %s\ne2fsprogs %s\nsize %s MiB\n' "$BB_VERSION" "$E2_VERSION" "$SIZE_MIB"
        printf '== init\n'; cat "$INIT"
        printf '== build.sh\n'; cat "$SELF"
    } | sha256sum | cut -c1-32
)"
OUT="$CACHE_ROOT/rootfs-${KEY:0:16}.ext4"

if [[ -f $OUT ]]; then
    log "cached: $OUT"
    printf '%s\n' "$OUT"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
STAGE="$(mktemp -d "$CACHE_ROOT/.rootfs-${KEY:0:16}.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
ROOT="$STAGE/root"

log "staging busybox $BB_VERSION ($BUSYBOX)"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,mnt}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
"$BUSYBOX" --list-full | while IFS= read -r applet; do
    [[ -n $applet && $applet != bin/busybox ]] || continue
    mkdir -p "$ROOT/$(dirname "$applet")"
    [[ -e $ROOT/$applet || -L $ROOT/$applet ]] || ln -s /bin/busybox "$ROOT/$applet"
done
[[ -L $ROOT/bin/sh ]] || die "busybox has no sh applet"
rm -f "$ROOT/sbin/init"
install -m 0755 "$INIT" "$ROOT/sbin/init"
ln -s /sbin/init "$ROOT/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
printf 'ember\n' >"$ROOT/etc/hostname"
printf '/dev/root / ext4 rw 0 1\n' >"$ROOT/etc/fstab"
find "$ROOT" -exec touch -h -d @0 {} +

# Deterministic UUID/hash seed from the key; inode tables and journal are
# initialised now so that the guest kernel starts no lazy-init work.
uuid="${KEY:0:8}-${KEY:8:4}-4${KEY:13:3}-8${KEY:17:3}-${KEY:20:12}"
log "mkfs.ext4 ${SIZE_MIB} MiB"
truncate -s "${SIZE_MIB}M" "$STAGE/rootfs.ext4"
E2FSPROGS_FAKE_TIME=1 "$MKFS" -q -F -t ext4 -L ember-root -b 4096 -I 256 -U "$uuid" \
    -E "lazy_itable_init=0,lazy_journal_init=0,hash_seed=$uuid,root_owner=0:0" \
    -d "$ROOT" "$STAGE/rootfs.ext4" >&2 || die "mkfs.ext4 failed"
mv -f "$STAGE/rootfs.ext4" "$OUT"
log "done: $OUT"
printf '%s\n' "$OUT"
