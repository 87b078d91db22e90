#!/usr/bin/env bash
# Build Ember's busybox initramfs (newc cpio, uncompressed by default).
#
#   resources/initramfs/build.sh [--gzip | --uncompressed]
#                                (or EMBER_INITRAMFS_COMPRESS=gzip|none)
#
# Contents: /init (resources/initramfs/init.c, a small static program), /bin/xfer (xfer.c,
# the guest side of the network and vsock tests),
# /bin/busybox (from Debian's busybox-static), /bin/sh, /etc/busybox-applets
# (the applet names, for init to run a command such as `ls` that has no link)
# and the usual empty mount points. Nothing else: every archive entry and every
# byte costs boot time when the guest kernel runs under kvm-pvm's instruction
# emulator (the ~400 applet symlinks took ~20 s to unpack there, gzip
# decompression of 1 MiB ~70 s). Busybox's shell runs its applets without
# links (FEATURE_SH_STANDALONE). The default is a plain .cpio (the kernel takes
# it as is): ~70 s faster to unpack there than gzip; --gzip makes a smaller
# .cpio.gz.
#
# Cached in ~/.cache/ember/initramfs-<key>.cpio[.gz], <key> = first 16 hex
# digits of sha256 over the init and xfer binaries, this script, the busybox-static version and
# the compression. Progress goes to stderr; the last stdout line is the path
# of the archive.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${EMBER_CACHE_DIR:-$HOME/.cache/ember}"
COMPRESS="${EMBER_INITRAMFS_COMPRESS:-none}"
case "${1:-}" in
--uncompressed) COMPRESS=none ;;
--gzip) COMPRESS=gzip ;;
"") ;;
*) echo "usage: $0 [--gzip | --uncompressed]" >&2; exit 2 ;;
esac
case "$COMPRESS" in
gzip) EXT=cpio.gz ;;
none) EXT=cpio ;;
*) echo "EMBER_INITRAMFS_COMPRESS must be gzip or none" >&2; exit 2 ;;
esac

LOG_TAG=initramfs
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

ensure_packages busybox-static cpio gzip
INIT="$(build_init)"
XFER="$(build_static xfer)"

BUSYBOX="$(dpkg-query -L busybox-static | grep -E '/s?bin/busybox$' | head -n1)"
[[ -x $BUSYBOX ]] || die "busybox-static binary not found"
BB_VERSION="$(dpkg-query -W -f='${Version}' busybox-static)"

KEY="$(
    {
        printf 'busybox-static %s\ncompress %s\n' "$BB_VERSION" "$COMPRESS"
        printf '== init\n'; cat "$INIT"
        printf '== xfer\n'; cat "$XFER"
        printf '== build.sh\n'; cat "$SELF"
    } | sha256sum | cut -c1-16
)"
OUT="$CACHE_ROOT/initramfs-$KEY.$EXT"

if [[ -f $OUT ]]; then
    log "cached: $OUT"
    printf '%s\n' "$OUT"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
STAGE="$(mktemp -d "$CACHE_ROOT/.initramfs-$KEY.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
ROOT="$STAGE/root"

log "staging busybox $BB_VERSION ($BUSYBOX)"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
"$BUSYBOX" --list-full | grep -qx 'bin/sh' || die "busybox has no sh applet"
ln -s busybox "$ROOT/bin/sh"
install -m 0755 "$INIT" "$ROOT/init"
install -m 0755 "$XFER" "$ROOT/bin/xfer"
"$BUSYBOX" --list >"$ROOT/etc/busybox-applets"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"

log "writing cpio ($COMPRESS)"
find "$ROOT" -exec touch -h -d @0 {} +
(
    cd "$ROOT"
    find . -mindepth 1 -print0 | LC_ALL=C sort -z |
        cpio --null --create --format=newc --owner=0:0 --reproducible --quiet
) >"$STAGE/initramfs.cpio"
if [[ $COMPRESS == gzip ]]; then
    gzip -9n "$STAGE/initramfs.cpio"
    mv -f "$STAGE/initramfs.cpio.gz" "$OUT"
else
    mv -f "$STAGE/initramfs.cpio" "$OUT"
fi
log "done: $OUT ($(du -k "$OUT" | cut -f1) KiB)"
printf '%s\n' "$OUT"
